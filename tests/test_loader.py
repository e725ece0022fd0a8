"""Cage modules, in process: lib/pmnc/loader.py."""

from __future__ import annotations

import builtins
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import CageTree, ServedLoader, wait_until
from pmnc import errors, log
from pmnc import request as rq
from pmnc.errors import (
    InputParameterError,
    InvalidMethodAccessError,
    InvalidModuleNameError,
    ModuleAccessTimedOutError,
    ModuleFileBrokenError,
    ModuleFileIncompleteError,
    ReturnValueError,
)

MakeLoader = Callable[..., ServedLoader]


@pytest.fixture
def records() -> Iterator[io.StringIO]:
    """Every log record written during the test."""
    buffer = io.StringIO()
    log.configure(None, echo=buffer, echo_level=log.NOISE)
    log.set_level("LOG")
    yield buffer
    log.configure(None, echo=sys.stderr)
    log.set_level("LOG")


@pytest.fixture
def make_loader(tree: CageTree, records: io.StringIO) -> Iterator[MakeLoader]:
    loaders: list[ServedLoader] = []

    def make(start: bool = False, **kwargs: Any) -> ServedLoader:
        loader = ServedLoader(str(tree.cages), "sample", "node1", settle=0.05, **kwargs)
        loaders.append(loader)
        if start:
            loader.start()
        return loader

    yield make
    for loader in loaders:
        loader.stop()


def logged(records: io.StringIO, text: str) -> bool:
    return text in records.getvalue()


def version_source(value: Any, extra: str = "") -> str:
    return f"""
        {extra}
        def version():
            return {value!r}
    """


# --- calls --------------------------------------------------------------------------------


def test_call_forms(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("calc", """
        def add(a, b=0):
            return a + b
    """, ["add"])
    loader = make_loader()
    assert loader.root.calc.add(1, 2) == 3
    assert loader.root.calc.add(1, b=5) == 6
    assert loader.pmnc("caller").calc.add(2, 2) == 4
    assert loader.call("calc", "add", (3,), {"b": 4}) == 7


def test_module_calls_another_module_through_pmnc(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("front", """
        def greet(name):
            return pmnc.back.title(name) + " !"
    """, ["greet"])
    tree.module("back", """
        def title(name):
            return name.title()
    """, ["title"])
    assert make_loader().root.front.greet("ann lee") == "Ann Lee !"


def test_exceptions_pass_through_calls(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("fails", """
        def fail():
            raise LookupError("nothing here")
    """, ["fail"])
    with pytest.raises(LookupError, match="nothing here"):
        make_loader().root.fails.fail()


def test_classes_are_returned_as_classes(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("shapes", """
        class Square:
            def __init__(self, side):
                self.side = side
            def area(self):
                return self.side ** 2
    """, ["Square"])
    loader = make_loader()
    square_class = loader.root.shapes.Square
    assert isinstance(square_class, type)
    square = square_class(3)
    assert isinstance(square, square_class)
    assert square.area() == 9


# --- location -----------------------------------------------------------------------------


def test_cage_file_overrides_shared_per_file(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("a", version_source("shared a"), ["version"], folder=tree.shared)
    tree.module("b", version_source("shared b"), ["version"], folder=tree.shared)
    tree.module("a", version_source("cage a"), ["version"])
    loader = make_loader()
    assert loader.root.a.version() == "cage a"
    assert loader.root.b.version() == "shared b"


def test_missing_module(tree: CageTree, make_loader: MakeLoader) -> None:
    with pytest.raises(errors.ModuleNotFoundError) as info:
        make_loader().root.nowhere.f()
    assert str(info.value) == "file nowhere.py was not found"
    assert isinstance(info.value, builtins.ModuleNotFoundError)


def test_invalid_module_names(tree: CageTree, make_loader: MakeLoader) -> None:
    loader = make_loader()
    with pytest.raises(InvalidModuleNameError):
        loader.root._private  # noqa: B018
    with pytest.raises(InvalidModuleNameError):
        getattr(loader.root, "dotted.name")
    with pytest.raises(InvalidModuleNameError):
        loader.call("../escape", "f", (), {})


def test_new_file_created_after_start_is_served_at_once(tree: CageTree, make_loader: MakeLoader) -> None:
    loader = make_loader(start=True)
    with pytest.raises(errors.ModuleNotFoundError):
        loader.root.late.version()
    tree.module("late", version_source("here"), ["version"])
    assert loader.root.late.version() == "here"


# --- refusing files -----------------------------------------------------------------------


def test_file_without_eof_is_refused(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("half", version_source(1), ["version"], eof=False)
    loader = make_loader()
    with pytest.raises(ModuleFileIncompleteError) as info:
        loader.root.half.version()
    assert str(info.value) == "file half.py is incomplete: it has no # EOF line"
    # once the editor finishes the file, it is served
    tree.module("half", version_source(1), ["version"])
    assert loader.root.half.version() == 1


def test_eof_line_may_have_trailing_whitespace(tree: CageTree, make_loader: MakeLoader) -> None:
    (tree.cage / "ws.py").write_text("__all__ = ['f']\ndef f():\n    return 1\n# EOF   \n")
    assert make_loader().root.ws.f() == 1


def test_syntax_error_is_a_broken_file(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("bad", """
        def f(:
            pass
    """, ["f"])
    loader = make_loader()
    with pytest.raises(ModuleFileBrokenError) as info:
        loader.root.bad.f()
    assert str(info.value).startswith("file bad.py is broken: SyntaxError(")
    with pytest.raises(ModuleFileBrokenError):  # and stays refused while the file is unchanged
        loader.root.bad.f()


def test_error_in_module_body_is_a_broken_file(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("bad", """
        RATIO = 1 / 0
        def f():
            pass
    """, ["f"])
    with pytest.raises(ModuleFileBrokenError) as info:
        make_loader().root.bad.f()
    assert str(info.value).startswith('file bad.py is broken: ZeroDivisionError("division by zero")')


def test_a_non_callable_export_fails_only_where_it_is_used(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("consts", """
        LIMIT = 5
        def f():
            return LIMIT
    """, ["LIMIT", "f"])
    root = make_loader().root
    assert root.consts.f() == 5  # the original loaded such a module; only LIMIT is unusable
    with pytest.raises(InvalidMethodAccessError) as info:
        root.consts.LIMIT()
    assert "attribute LIMIT in module consts is neither a class nor a function" in str(info.value)


def test_an_export_not_defined_fails_only_where_it_is_used(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("ghost", """
        def f():
            return "here"
    """, ["f", "g"])
    root = make_loader().root
    assert root.ghost.f() == "here"
    with pytest.raises(InvalidMethodAccessError) as info:
        root.ghost.g()
    assert "attribute g is in __all__ of module ghost but not defined" in str(info.value)


def test_all_must_be_a_list_of_strings(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("odd", """
        __all__ = "f"
        def f():
            pass
    """)
    with pytest.raises(ModuleFileBrokenError):
        make_loader().root.odd.f()


def test_module_without_all_exports_nothing(tree: CageTree, make_loader: MakeLoader,
                                            records: io.StringIO) -> None:
    tree.module("open", """
        def f():
            return 1
    """)
    with pytest.raises(InvalidMethodAccessError):
        make_loader().root.open.f()
    assert logged(records, "file open.py has no __all__: nothing in it can be called")


# --- attribute rules ------------------------------------------------------------------------


def test_private_attribute_is_refused(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("mod", """
        def _hidden():
            return 1
        def f():
            return 2
    """, ["f", "_hidden"])
    with pytest.raises(InvalidMethodAccessError) as info:
        make_loader().root.mod._hidden()
    assert str(info.value) == "attribute _hidden of module mod is private"


def test_attribute_not_in_all_is_refused(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("mod", """
        def helper():
            return 1
        def f():
            return helper()
    """, ["f"])
    loader = make_loader()
    assert loader.root.mod.f() == 1
    with pytest.raises(InvalidMethodAccessError) as info:
        loader.root.mod.helper()
    assert str(info.value) == "attribute helper is not declared in __all__ of module mod"
    with pytest.raises(AttributeError):  # callers using getattr(..., default) keep working
        loader.call("mod", "helper", (), {})
    assert getattr(loader.root.mod, "helper", None) is None


# --- annotations ------------------------------------------------------------------------------


def test_annotations_are_enforced(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("typed", """
        def double(x: int) -> int:
            return x * 2
        def lie(x) -> int:
            return str(x)
    """, ["double", "lie"])
    loader = make_loader()
    assert loader.root.typed.double(2) == 4
    with pytest.raises(InputParameterError) as info:
        loader.root.typed.double("2")
    assert str(info.value) == "double() has got an incompatible value for x: 2"
    with pytest.raises(InputParameterError):
        loader.root.typed.double(x=2.0)
    with pytest.raises(ReturnValueError):
        loader.root.typed.lie(1)


def test_postponed_annotations_are_enforced(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("typed", """
        from __future__ import annotations
        __all__ = ["double"]
        def double(x: int) -> int:
            return x * 2
    """)
    loader = make_loader()
    assert loader.root.typed.double(2) == 4
    with pytest.raises(InputParameterError):
        loader.root.typed.double("2")


def test_module_with_postponed_annotations_may_use_dataclasses(tree: CageTree,
                                                               make_loader: MakeLoader) -> None:
    """`from __future__ import annotations` with @dataclass is everyday Python 3.11 code."""
    tree.module("points", """
        from __future__ import annotations
        from dataclasses import dataclass
        __all__ = ["make", "Point"]
        @dataclass
        class Point:
            x: int
            y: int = 0
        def make(x: int) -> Point:
            return Point(x)
    """)
    loader = make_loader()
    point = loader.root.points.make(1)
    assert (point.x, point.y) == (1, 0)


def test_bad_default_makes_the_file_broken(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("typed", """
        def f(x: int = "zero"):
            return x
    """, ["f"])
    with pytest.raises(ModuleFileBrokenError) as info:
        make_loader().root.typed.f()
    assert "fails its own check" in str(info.value)


# --- circular calls ---------------------------------------------------------------------------


def test_mutually_recursive_modules_50_deep(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("ping", """
        def ping(n, trail):
            trail.append("ping")
            return n if n == 0 else pmnc.pong.pong(n - 1, trail)
    """, ["ping"])
    tree.module("pong", """
        def pong(n, trail):
            trail.append("pong")
            return n if n == 0 else pmnc.ping.ping(n - 1, trail)
    """, ["pong"])
    trail: list[str] = []
    assert make_loader().root.ping.ping(50, trail) == 0
    assert len(trail) == 51
    assert trail[:4] == ["ping", "pong", "ping", "pong"]


def test_recursion_within_a_module(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("fact", """
        def fact(n):
            return 1 if n <= 1 else n * pmnc.fact.fact(n - 1)
    """, ["fact"])
    assert make_loader().root.fact.fact(50) == 30414093201713378043612608166064768844377641568960512000000000000


# --- injected globals ----------------------------------------------------------------------------


def test_injected_globals(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("whoami", """
        def info():
            return __cage__, __node__, __cage_dir__, __module__, repr(pmnc)
    """, ["info"])
    cage, node, cage_dir, module, pmnc_repr = make_loader().root.whoami.info()
    assert (cage, node, module) == ("sample", "node1", "whoami")
    assert os.path.samefile(cage_dir, tree.cage)
    assert pmnc_repr == "<pmnc of whoami in cage sample>"


def test_pmnc_request_is_the_current_request(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("req", """
        def current():
            return pmnc.request
    """, ["current"])
    loader = make_loader()
    request = rq.Request(timeout=5.0, interface="test", protocol="test")
    with rq.attached(request):
        assert loader.root.req.current() is request


def test_module_log_names_the_module(tree: CageTree, make_loader: MakeLoader, records: io.StringIO) -> None:
    tree.module("talk", """
        def hello():
            pmnc.log.message("hello from a module")
    """, ["hello"])
    make_loader().root.talk.hello()
    assert logged(records, "hello from a module # talk.py:3 in hello()")


def test_modules_are_not_importable(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("zz_cage_only", version_source(1), ["version"])
    make_loader().root.zz_cage_only.version()
    assert "zz_cage_only" not in sys.modules


# --- hot reload -------------------------------------------------------------------------------------


def test_changed_file_is_reloaded(tree: CageTree, make_loader: MakeLoader, records: io.StringIO) -> None:
    tree.module("mod", version_source(1), ["version"])
    loader = make_loader(start=True)
    bound = loader.root.mod.version  # a reference kept across the reload
    assert bound() == 1
    tree.module("mod", version_source(2), ["version"])
    wait_until(lambda: loader.root.mod.version() == 2, message="new version served")
    assert bound() == 2
    assert loader.version_number("mod") == 2
    assert logged(records, "module mod has been reloaded (version 2)")


def test_reload_runs_the_body_again(tree: CageTree, make_loader: MakeLoader) -> None:
    body = """
        VERSION = {}
        calls = []
        def count():
            calls.append(1)
            return len(calls)
    """
    tree.module("counter", body.format(1), ["count"])
    loader = make_loader(start=True)
    assert [loader.root.counter.count() for _ in range(3)] == [1, 2, 3]
    tree.module("counter", body.format(2), ["count"])
    wait_until(lambda: loader.version_number("counter") == 2, message="reloaded")
    assert loader.root.counter.count() == 1


def test_broken_new_version_keeps_old_one_serving(tree: CageTree, make_loader: MakeLoader,
                                                  records: io.StringIO) -> None:
    tree.module("mod", version_source(1), ["version"])
    loader = make_loader(start=True)
    assert loader.root.mod.version() == 1
    tree.module("mod", "def version(:\n", ["version"])
    wait_until(lambda: logged(records, "module mod version 2 refused, version 1 keeps serving: "
                                       "file mod.py is broken: SyntaxError("), message="refusal logged")
    assert loader.root.mod.version() == 1
    tree.module("mod", version_source(3), ["version"])
    wait_until(lambda: loader.root.mod.version() == 3, message="fixed version served")
    assert loader.version_number("mod") == 2


def test_incomplete_new_version_keeps_old_one_serving(tree: CageTree, make_loader: MakeLoader,
                                                      records: io.StringIO) -> None:
    tree.module("mod", version_source(1), ["version"])
    loader = make_loader(start=True)
    assert loader.root.mod.version() == 1
    tree.module("mod", version_source(2), ["version"], eof=False)
    wait_until(lambda: logged(records, "file mod.py is incomplete"), message="refusal logged")
    assert loader.root.mod.version() == 1
    tree.module("mod", version_source(2), ["version"])
    wait_until(lambda: loader.root.mod.version() == 2, message="completed version served")


def test_not_reloadable_module_keeps_first_version(tree: CageTree, make_loader: MakeLoader,
                                                   records: io.StringIO) -> None:
    tree.module("fixed", version_source(1, "__reloadable__ = False"), ["version"])
    loader = make_loader(start=True)
    assert loader.root.fixed.version() == 1
    tree.module("fixed", version_source(2, "__reloadable__ = False"), ["version"])
    wait_until(lambda: logged(records, "module fixed is not reloadable, restart the cage to use the changed file"),
               message="refusal logged")
    assert loader.root.fixed.version() == 1
    assert loader.version_number("fixed") == 1


def test_removed_file_keeps_serving(tree: CageTree, make_loader: MakeLoader, records: io.StringIO) -> None:
    path = tree.module("mod", version_source(1), ["version"])
    loader = make_loader(start=True)
    assert loader.root.mod.version() == 1
    path.unlink()
    wait_until(lambda: logged(records, "file mod.py has been removed, version 1 keeps serving"), message="warning")
    assert loader.root.mod.version() == 1


def test_cage_copy_created_later_overrides_shared(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.module("mod", version_source("shared"), ["version"], folder=tree.shared)
    loader = make_loader(start=True)
    assert loader.root.mod.version() == "shared"
    tree.module("mod", version_source("cage"), ["version"])
    wait_until(lambda: loader.root.mod.version() == "cage", message="cage copy served")


def test_in_flight_call_finishes_on_old_code_while_reload_waits(tree: CageTree, make_loader: MakeLoader,
                                                               records: io.StringIO) -> None:
    tree.module("mod", """
        def work(shared):
            shared["entered"].set()
            shared["release"].wait(10.0)
            return "old"
        def probe():
            return "v1"
    """, ["work", "probe"])
    loader = make_loader(start=True)
    shared = {"entered": threading.Event(), "release": threading.Event()}
    results: list[str] = []
    caller = threading.Thread(target=lambda: results.append(loader.root.mod.work(shared)), daemon=True)
    caller.start()
    assert shared["entered"].wait(5.0)

    tree.module("mod", """
        def work(shared):
            return "new"
        def probe():
            return "v2"
    """, ["work", "probe"])

    def new_callers_held_back() -> bool:
        """True once the pending swap makes a new call wait (here: past its short deadline)."""
        with rq.attached(rq.Request(timeout=0.05, interface="test", protocol="test")):
            try:
                assert loader.root.mod.probe() == "v1"
            except ModuleAccessTimedOutError:
                return True
        return False

    try:
        wait_until(new_callers_held_back, message="reload waiting for the call in flight")
        assert caller.is_alive()
        assert loader.version_number("mod") == 1
        assert not logged(records, "module mod has been reloaded")
    finally:
        shared["release"].set()
    caller.join(5.0)
    assert results == ["old"]
    wait_until(lambda: loader.root.mod.probe() == "v2", message="new version served")
    assert loader.root.mod.work(shared) == "new"
