"""Config modules: lib/pmnc/config.py, read through a Loader over a temporary tree."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from conftest import CageTree, ServedLoader, module_source, wait_until, write_file
from pmnc.config import Config
from pmnc.errors import ConfigError, ModuleFileIncompleteError
from pmnc.loader import Loader

MakeLoader = Callable[..., ServedLoader]


@pytest.fixture
def make_loader(tree: CageTree) -> Iterator[MakeLoader]:
    loaders: list[ServedLoader] = []

    def make(self_test: str | None = None, start: bool = False) -> ServedLoader:
        loader = ServedLoader(str(tree.cages), "sample", "node1", self_test=self_test, settle=0.05)
        loaders.append(loader)
        if start:
            loader.start()
        return loader

    yield make
    for loader in loaders:
        loader.stop()


def config_of(loader: Loader, target: str) -> Config:
    """The view `pmnc.config` gives module `target`: config_<target>."""
    return Config(loader, target)


# --- get and copy --------------------------------------------------------------------------


def test_get_reads_config_of_the_calling_module(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "db.local", "port": 5432})
    tree.write(tree.cage, "config_web", {"host": "web.local"})
    loader = make_loader()
    assert config_of(loader, "db").get("host") == "db.local"
    assert config_of(loader, "db").get("port") == 5432
    assert config_of(loader, "web").get("host") == "web.local"


def test_copy_returns_all_keys(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "db.local", "port": 5432})
    assert config_of(make_loader(), "db").copy() == {"host": "db.local", "port": 5432}


def test_results_are_copies(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"hosts": ["a", "b"], "opts": {"x": 1}})
    config = config_of(make_loader(), "db")
    config.get("hosts").append("c")
    config.get("opts")["x"] = 2
    config.copy()["hosts"].append("d")
    assert config.get("hosts") == ["a", "b"]
    assert config.get("opts") == {"x": 1}


def test_missing_key_without_default_is_none_as_in_the_original(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "db.local"})
    assert config_of(make_loader(), "db").get("port") is None


def test_missing_key_with_default(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "db.local"})
    config = config_of(make_loader(), "db")
    assert config.get("port", 5432) == 5432
    assert config.get("port", None) is None


def test_default_is_expanded_too(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {})
    assert config_of(make_loader(), "db").get("name", "$__cage__-db") == "sample-db"


def test_missing_config_file(tree: CageTree, make_loader: MakeLoader) -> None:
    with pytest.raises(ModuleNotFoundError) as info:
        config_of(make_loader(), "nothing").get("x")
    assert "config_nothing.py was not found" in str(info.value)


def test_config_file_without_eof_is_not_read(tree: CageTree, make_loader: MakeLoader) -> None:
    (tree.cage / "config_db.py").write_text("config = {'host': 'half'}\n")
    with pytest.raises(ModuleFileIncompleteError):
        config_of(make_loader(), "db").get("host")


def test_config_must_be_a_dict(tree: CageTree, make_loader: MakeLoader) -> None:
    (tree.cage / "config_db.py").write_text("config = ['host']\n# EOF\n")
    with pytest.raises(ConfigError) as info:
        config_of(make_loader(), "db").get("host")
    assert "config_db.py must define config = dict(...)" in str(info.value)


def test_version_follows_the_module(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "a"})
    assert config_of(make_loader(), "db").version == 1


def test_pmnc_config_of_a_module_reads_its_config_file(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "db.local"})
    config = make_loader().pmnc("db").config
    assert isinstance(config, Config)
    assert config.get("host") == "db.local"


def test_module_code_reads_config_through_pmnc(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "db.local"})
    (tree.cage / "db.py").write_text(module_source("""
        def host():
            return pmnc.config.get("host")
    """, ["host"]))
    assert make_loader().root.db.host() == "db.local"


# --- cage folder over .shared, per file -----------------------------------------------------


def test_cage_file_overrides_shared_per_file(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.shared, "config_db", {"host": "shared-db", "port": 1})
    tree.write(tree.shared, "config_web", {"host": "shared-web"})
    tree.write(tree.cage, "config_db", {"host": "cage-db"})
    loader = make_loader()
    assert config_of(loader, "db").get("host") == "cage-db"
    assert config_of(loader, "web").get("host") == "shared-web"
    # the override is the whole file, not a merge of keys
    assert config_of(loader, "db").get("port") is None


# --- self-test overlay ------------------------------------------------------------------------


def test_self_test_config_ignored_normally(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "prod", "port": 1}, {"host": "test"})
    config = config_of(make_loader(), "db")
    assert config.get("host") == "prod"
    assert config.copy() == {"host": "prod", "port": 1}


def test_self_test_config_overlays_in_self_test_mode(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "prod", "port": 1}, {"host": "test", "extra": True})
    config = config_of(make_loader(self_test="db"), "db")
    assert config.get("host") == "test"
    assert config.get("port") == 1
    assert config.get("extra") is True
    assert config.copy() == {"host": "test", "port": 1, "extra": True}


def test_self_test_mode_without_self_test_config(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "prod"})
    assert config_of(make_loader(self_test="db"), "db").get("host") == "prod"


# --- expansion --------------------------------------------------------------------------------------


def test_expansion_from_config_config_and_cage_variables(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_config", {"db_host": "db.local", "env": "prod"})
    tree.write(tree.cage, "config_db", {
        "url": "pg://$db_host/${__cage__}_$env",
        "node": "$__node__",
        "state": "$__cage_dir__/state",
    })
    config = config_of(make_loader(), "db")
    assert config.get("url") == "pg://db.local/sample_prod"
    assert config.get("node") == "node1"
    assert config.get("state") == str(tree.cage) + "/state"


def test_cage_variables_without_config_config(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"name": "$__cage__@$__node__"})
    assert config_of(make_loader(), "db").get("name") == "sample@node1"


def test_double_dollar_and_unknown_names(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"price": "$$5", "unknown": "$nope and ${nope}", "lone": "100$"})
    config = config_of(make_loader(), "db")
    assert config.get("price") == "$5"
    assert config.get("unknown") == "$nope and ${nope}"
    assert config.get("lone") == "100$"


def test_expansion_recurses_into_containers_but_not_keys(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_config", {"h": "host1"})
    tree.write(tree.cage, "config_db", {
        "nested": {"$h": ["$h", ("$h", 1)], "set": {"$h"}},
    })
    assert config_of(make_loader(), "db").get("nested") == {"$h": ["host1", ("host1", 1)], "set": {"host1"}}


def test_non_strings_are_left_alone(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"n": 5, "f": 1.5, "b": b"$x", "none": None})
    assert config_of(make_loader(), "db").copy() == {"n": 5, "f": 1.5, "b": b"$x", "none": None}


def test_eval_strings(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_config", {"port": "8080", "host": "127.0.0.1"})
    tree.write(tree.cage, "config_db", {
        "sum": "eval(1 + 2)",
        "port": "eval($port + 1)",
        "address": "eval(('$host', $port))",
        "timeout": "eval(3.0)",
        "not_eval": "evaluate(1)",
    })
    config = config_of(make_loader(), "db")
    assert config.get("sum") == 3
    assert config.get("port") == 8081
    assert config.get("address") == ("127.0.0.1", 8080)
    assert config.get("timeout") == 3.0
    assert config.get("not_eval") == "evaluate(1)"


def test_eval_of_default(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {})
    assert config_of(make_loader(), "db").get("timeout", "eval(2 * 5)") == 10


def test_broken_eval_is_a_config_error(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"bad": "eval(1 +)"})
    with pytest.raises(ConfigError) as info:
        config_of(make_loader(), "db").get("bad")
    assert "config_db.py: cannot evaluate" in str(info.value)


def test_broken_eval_does_not_spoil_other_keys(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"bad": "eval(1 +)", "good": "eval(2 + 2)"})
    assert config_of(make_loader(), "db").get("good") == 4


# --- edits seen after reload ------------------------------------------------------------------------


def test_edit_is_seen_after_reload(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "before"})
    loader = make_loader(start=True)
    config = config_of(loader, "db")
    assert config.get("host") == "before"
    tree.write(tree.cage, "config_db", {"host": "after"})
    wait_until(lambda: config.get("host") == "after", message="edited config seen")
    assert config.version == 2


def test_edit_of_config_config_changes_expansion(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_config", {"db_host": "old.local"})
    tree.write(tree.cage, "config_db", {"url": "pg://$db_host/"})
    loader = make_loader(start=True)
    config = config_of(loader, "db")
    assert config.get("url") == "pg://old.local/"
    tree.write(tree.cage, "config_config", {"db_host": "new.local"})
    wait_until(lambda: config.get("url") == "pg://new.local/", message="new variable seen")
    assert config.version == 1  # config_db itself did not change


def test_broken_edit_keeps_old_values(tree: CageTree, make_loader: MakeLoader) -> None:
    tree.write(tree.cage, "config_db", {"host": "good"})
    loader = make_loader(start=True)
    config = config_of(loader, "db")
    assert config.get("host") == "good"
    write_file(tree.cage / "config_db.py", "config = {'host': \n# EOF\n")  # a syntax error
    tree.write(tree.cage, "config_web", {"host": "marker"})  # a later edit, to know the first was seen
    assert config_of(loader, "web").get("host") == "marker"
    tree.write(tree.cage, "config_web", {"host": "marker2"})
    wait_until(lambda: config_of(loader, "web").get("host") == "marker2", message="later edit seen")
    assert config.get("host") == "good"
    tree.write(tree.cage, "config_db", {"host": "fixed"})
    wait_until(lambda: config.get("host") == "fixed", message="fixed config seen")
