"""The layers of lib/pmnc (../shared/DESIGN.md §3): imports point down, never in a circle.

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`.
Dynamic imports (`importlib.import_module("pmnc.protocols." + name)`) are not seen.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lib" / "pmnc"

# Module (relative to pmnc; a package stands for its __init__.py and, as a prefix, for the
# modules in it; the longest prefix wins) -> rank. A module may import its own rank or lower.
# A module missing here fails the test: a new module must be given its place.
RANKS = {
    # 0 base: what everything may use
    "__init__": 0, "errors": 0, "request": 0, "log": 0, "rwlock": 0, "typecheck": 0,
    "loop": 0, "keys": 0, "tls": 0, "resource": 0, "venv": 0, "timeout": 0, "threads": 0, "interlocked": 0,
    "placement": 0, "busywait": 0,
    # 1 core
    "workers": 1, "loader": 1, "config": 1, "schema": 1, "state": 1, "decisions": 1, "lifecycle": 1,
    "received": 1,
    # the monitor's statistics are fed by the lifecycle and transactions: standard library only
    "monitor.stats": 0,
    # 2 services
    "transaction": 2, "pools": 2, "cache": 1, "retry": 2, "rpc": 2, "resource_pool": 2,
    # 3 runtime
    "runtime": 3, "facade": 3, "framework": 3, "monitor": 3,
    # 4 protocols
    "interfaces": 4, "protocols": 4,
    # 5 cage
    "cage": 5, "selftest": 5, "self_test": 5, "supervisor": 5,
}
LAYERS = ["base", "core", "services", "runtime", "protocols", "cage"]

# Protocol modules do not import each other, except these (importer -> what it may import).
PROTOCOLS = "protocols"
PROTOCOL_PAIRS = {
    "xmlrpc": {"http", "httpwire", "httpclient"},
    "http": {"httpwire", "httpclient"},
    "performance": {"http", "httpwire"},  # the monitor's pages: an HTTP interface with a built-in handler
    "postgresql": {"sql"},
    "oracle": {"sql"},
    "smpp": {"smppwire", "smpptext", "smpppdu"},
    "smppwire": {"smpppdu", "smpptext"},
    "smpppdu": {"smpptext"},
}


@dataclass(frozen=True)
class Import:
    """One import statement naming a pmnc module."""

    importer: str  # module names relative to pmnc: "rpc.cluster", "__init__" for pmnc itself
    imported: str
    file: str
    line: int
    where: str  # "at module level", "under TYPE_CHECKING", "in Loader.call()", "in class Loader"

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports pmnc.{self.imported} {self.where}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


class _Finder(ast.NodeVisitor):
    """The imports of one module with where they stand; the package prefix is `top`."""

    def __init__(self, name: str, known: set[str], top: str, file: str) -> None:
        self.name, self.top, self.file = name, top, file
        self.known = {top if module == "__init__" else f"{top}.{module}" for module in known}
        self.scope: list[tuple[str, bool]] = []  # (name, whether a function)
        self.guarded = 0
        self.found: list[Import] = []

    def where(self) -> str:
        if self.scope:
            name = ".".join(name for name, _ in self.scope)
            return f"in {name}()" if self.scope[-1][1] else f"in class {name}"
        return "under TYPE_CHECKING" if self.guarded else "at module level"

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append((node.name, True))
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append((node.name, False))
        self.generic_visit(node)
        self.scope.pop()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self.guarded += 1
            for statement in node.body:
                self.visit(statement)
            self.guarded -= 1
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.resolve(node)
        for alias in node.names:
            self.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in self.known else base, node)

    def resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = [self.top, *(self.name.split(".") if self.name != "__init__" else [])]
        if not self.file.endswith("__init__.py"):
            package.pop()  # a module's package is its parent; a package's is itself
        package = package[: len(package) - node.level + 1]
        return ".".join(package + ([node.module] if node.module else []))

    def add(self, full: str, node: ast.stmt) -> None:
        if full != self.top and not full.startswith(self.top + "."):
            return
        # `import pmnc.rpc.codec` names the deepest module that exists
        while full not in self.known and "." in full:
            full = full.rsplit(".", 1)[0]
        imported = "__init__" if full == self.top else full[len(self.top) + 1:]
        found = Import(self.name, imported, self.file, node.lineno, self.where())
        if found not in self.found:  # `from pmnc.rpc.codec import a, b` is one import
            self.found.append(found)


def imports(root: Path = PACKAGE) -> list[Import]:
    """Every import of a module of the package at `root` by another of its modules."""
    known = modules(root)
    found: list[Import] = []
    for name, path in known.items():
        file = f"lib/pmnc/{path.relative_to(root)}" if root == PACKAGE else str(path)
        finder = _Finder(name, set(known), root.name, file)
        finder.visit(ast.parse(path.read_text(), str(path)))
        found.extend(found_import for found_import in finder.found if found_import.imported != name)
    return found


def rank(module: str, ranks: dict[str, int] = RANKS) -> int | None:
    """The rank of the longest entry that is the module or a package holding it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in ranks:
            return ranks[prefix]
    return None


def cycles(found: list[Import]) -> list[list[Import]]:
    """Cycles, each as the imports that close it, until every import that lies on a cycle is
    in one: the imports to undo. Groups of modules importing each other are found first
    (Tarjan's strongly connected components); each import inside a group closes a cycle."""
    graph: dict[str, dict[str, Import]] = {}
    for edge in found:
        graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
        graph.setdefault(edge.imported, {})
    result: list[list[Import]] = []
    for group in _groups(graph):
        covered: set[Import] = set()
        for node in sorted(group):
            for target, edge in sorted(graph[node].items()):
                if target in group and edge not in covered:
                    cycle = [edge, *_path(graph, group, target, node)]
                    covered.update(cycle)
                    result.append(cycle)
    return result


def _groups(graph: dict[str, dict[str, Import]]) -> list[set[str]]:
    """The strongly connected components of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _path(graph: dict[str, dict[str, Import]], group: set[str], start: str, end: str) -> list[Import]:
    """A shortest chain of imports from `start` to `end` inside the group (breadth first)."""
    came: dict[str, Import] = {}
    queue = [start]
    for node in queue:
        if node == end:
            path: list[Import] = []
            while node != start:
                path.insert(0, came[node])
                node = came[node].importer
            return path
        for target, edge in sorted(graph[node].items()):
            if target in group and target not in came and target != start:
                came[target] = edge
                queue.append(target)
    raise AssertionError(f"{end} is not reachable from {start}")  # in one component, it is


def against_direction(found: list[Import], ranks: dict[str, int] = RANKS) -> list[str]:
    """Why each import breaks the layers, one line each."""
    broken = []
    for edge in found:
        mine, theirs = rank(edge.importer, ranks), rank(edge.imported, ranks)
        if mine is None or theirs is None:
            continue  # test_every_module_has_a_rank says so
        if theirs > mine:
            broken.append(f"{edge}: pmnc.{edge.importer} is rank {mine} ({LAYERS[mine]}), pmnc.{edge.imported} "
                          f"is rank {theirs} ({LAYERS[theirs]}); a module may import only its own rank or lower")
        elif _protocol(edge.importer) and _protocol(edge.imported) and \
                _protocol(edge.imported) not in PROTOCOL_PAIRS.get(_protocol(edge.importer), set()):
            broken.append(f"{edge}: protocols do not import each other (allowed: {_ALLOWED})")
    return broken


_ALLOWED = "; ".join(f"{importer} -> {', '.join(sorted(them))}" for importer, them in PROTOCOL_PAIRS.items())


def _protocol(module: str) -> str:
    """`protocols.http` -> `http`; '' for the package itself and other modules."""
    return module.split(".", 1)[1] if module.startswith(PROTOCOLS + ".") else ""


def describe(cycle: list[Import]) -> str:
    names = " -> ".join(f"pmnc.{edge.importer}" for edge in cycle) + f" -> pmnc.{cycle[0].importer}"
    return "\n".join([f"import cycle: {names}", *(f"    {edge}" for edge in cycle)])


# --- lib/pmnc ----------------------------------------------------------------------------


def test_every_module_has_a_rank() -> None:
    unplaced = [f"lib/pmnc/{path.relative_to(PACKAGE)} (pmnc.{name})"
                for name, path in modules(PACKAGE).items() if rank(name) is None]
    assert not unplaced, "modules without a layer: give them a rank in RANKS of tests/test_layers.py:\n" + \
        "\n".join(unplaced)


def test_no_import_cycles() -> None:
    found = cycles(imports())
    assert not found, "import cycles (DESIGN.md §3), until every import on one is shown:\n" + \
        "\n".join(describe(cycle) for cycle in found)


def test_imports_point_down_and_protocols_stand_alone() -> None:
    broken = against_direction(imports())
    assert not broken, "imports against the layers (DESIGN.md §3):\n" + "\n".join(broken)


# --- the checker itself, on a package made for it ----------------------------------------


def make_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pmnc"
    for name, text in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(textwrap.dedent(text))
    return package


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    package = make_package(tmp_path, {
        "log.py": "from pmnc import request\n",
        "request.py": "def current():\n    from pmnc.log import write\n",
        "errors.py": "",
    })
    [cycle] = cycles(imports(package))
    assert [(edge.importer, edge.imported) for edge in cycle] == [("log", "request"), ("request", "log")]
    text = describe(cycle)
    assert "import cycle: pmnc.log -> pmnc.request -> pmnc.log" in text
    assert "request.py:2 imports pmnc.log in current()" in text


def test_relative_type_checking_and_submodule_imports_are_resolved(tmp_path: Path) -> None:
    package = make_package(tmp_path, {
        "rpc/__init__.py": "",
        "rpc/codec.py": "",
        "rpc/cluster.py": """\
            from typing import TYPE_CHECKING
            from . import codec
            from ..loader import Loader
            if TYPE_CHECKING:
                from pmnc.cage import Cage
            import pmnc.rpc.codec as c
            """,
        "loader.py": "", "cage.py": "",
    })
    found = {(edge.imported, edge.where) for edge in imports(package)}
    assert found == {("rpc.codec", "at module level"), ("loader", "at module level"),
                     ("cage", "under TYPE_CHECKING")}
    [broken] = against_direction(imports(package))
    assert "rpc/cluster.py:5 imports pmnc.cage under TYPE_CHECKING: pmnc.rpc.cluster is rank 2 (services)" in broken


def test_protocols_importing_each_other_are_refused_unless_listed(tmp_path: Path) -> None:
    package = make_package(tmp_path, {
        "protocols/__init__.py": "",
        "protocols/http.py": "from pmnc.protocols import httpwire\n",
        "protocols/httpwire.py": "",
        "protocols/mongodb.py": "from .http import Interface\nfrom pmnc import protocols\n",
    })
    [broken] = against_direction(imports(package))
    assert "protocols/mongodb.py:1 imports pmnc.protocols.http at module level: protocols do not import" in broken


def test_longest_prefix_wins() -> None:
    assert rank("rpc.cluster", {"rpc": 2, "rpc.cluster": 4}) == 4
    assert rank("rpc.codec", {"rpc": 2, "rpc.cluster": 4}) == 2
    assert rank("rpcx", {"rpc": 2}) is None
    assert rank("dashboard.web") is None  # a new package must be placed
