"""Config schemas: defaults written once, values converted, unknown keys (typos) refused by file and key."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ROOT,
    CageProcess,
    InProcessCage,
    config_source,
    http_config,
    http_request,
    module_source,
    write_file,
)
from pmnc.errors import ConfigError
from pmnc.interfaces import Interface
from pmnc.protocols import httpclient, mongodb, oracle, postgresql, sql, xmlrpc
from pmnc.protocols.http import Interface as HttpInterface
from pmnc.schema import POOL_KEYS, RESOURCE_KEYS, Key, Schema, interface_file, resource_file

KEYS = Schema(size=Key(10, int), timeout=Key(1.5, float), name=Key(None, str), flag=Key(False, bool),
              items=Key((), tuple), raw=Key("x"))


# --- the schema ----------------------------------------------------------------------------------------


def test_defaults_fill_what_the_config_leaves_out_and_the_config_is_untouched() -> None:
    config = {"size": 3}
    assert KEYS.read(config, "config_x.py") == {"size": 3, "timeout": 1.5, "name": None, "flag": False,
                                                 "items": (), "raw": "x"}
    assert config == {"size": 3}


def test_values_are_converted_and_none_stays_none_where_it_is_the_default() -> None:
    settings = KEYS.read({"size": "7", "timeout": 2, "name": None, "flag": 1, "items": ["a"], "raw": 5},
                         "config_x.py")
    assert settings == {"size": 7, "timeout": 2.0, "name": None, "flag": True, "items": ("a",), "raw": 5}
    assert type(settings["timeout"]) is float


@pytest.mark.parametrize("key, value", [("size", "many"), ("size", None), ("timeout", "soon"), ("items", 5)])
def test_a_value_that_does_not_convert_is_refused_by_file_and_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        KEYS.read({key: value}, "config_interface_x.py")
    assert str(info.value).startswith(f"config_interface_x.py: {key} must be ")
    assert repr(value) in str(info.value)


def test_an_unknown_key_is_refused_with_the_closest_known_one() -> None:
    with pytest.raises(ConfigError) as info:
        KEYS.read({"size": 1, "timeuot": 2.0}, "config_interface_x.py")
    assert str(info.value) == "config_interface_x.py: unknown config key: timeuot (did you mean timeout?)"
    with pytest.raises(ConfigError) as info:
        KEYS.read({"zzz": 1}, "config_interface_x.py")
    assert str(info.value) == "config_interface_x.py: unknown config key: zzz"


def test_several_unknown_keys_are_named_together_in_order() -> None:
    with pytest.raises(ConfigError) as info:
        KEYS.read({"timeuot": 1, "aaa": 2}, "config_resource_db.py")
    assert str(info.value) == ("config_resource_db.py: unknown config keys: aaa, timeuot "
                               "(did you mean timeout for timeuot?)")


def test_extend_adds_and_overrides_keys_and_leaves_the_base_alone() -> None:
    more = KEYS.extend(size=Key(20, int), extra=Key(True, bool))
    assert more.read({}, "f.py")["size"] == 20 and more.read({}, "f.py")["extra"] is True
    assert list(more)[:len(KEYS)] == list(KEYS) and "extra" not in KEYS
    assert KEYS.read({}, "f.py")["size"] == 10
    assert repr(Schema(a=Key(1))) == "<Schema a>"


def test_file_names() -> None:
    assert interface_file("http") == "config_interface_http.py"
    assert resource_file("db/3") == "config_resource_db.py"
    assert resource_file("db__orders/1") == "config_resource_db.py"  # a pool a__b reads config_resource_a.py
    assert resource_file("web") == "config_resource_web.py"


def test_pool_keys_have_the_documented_defaults() -> None:
    assert POOL_KEYS.read({}, "config_resource_db.py") == {
        "pool__size": None, "pool__standby": 0, "pool__idle_timeout": 30.0, "pool__max_age": 300.0,
        "pool__min_time": 0.0, "pool__max_time": None, "pool__cache_size": None, "pool__cache_policy": None,
        "pool__cache_default_ttl": None, "pool__cache_evict_period": None, "pool__cache_group_interval": None}
    assert POOL_KEYS.read({"pool__size": "4", "pool__max_time": 2}, "f.py")["pool__max_time"] == 2.0
    with pytest.raises(ConfigError, match=r"config_resource_db.py: unknown config key: pool__sise "
                                          r"\(did you mean pool__size\?\)"):
        POOL_KEYS.read({"pool__sise": 4}, "config_resource_db.py")


# --- the protocols' schemas --------------------------------------------------------------------------


def test_interface_schemas_extend_the_base() -> None:
    assert set(Interface.keys) == {"request_timeout"}
    assert set(Interface.keys) <= set(HttpInterface.keys) <= set(xmlrpc.Interface.keys)
    assert "allow_none" in xmlrpc.Interface.keys and "protocol" not in HttpInterface.keys


def test_resource_schemas_accept_what_pools_add() -> None:
    for keys in (httpclient.KEYS, xmlrpc.KEYS, postgresql.KEYS, oracle.KEYS, mongodb.KEYS):
        assert set(RESOURCE_KEYS) <= set(keys) and "protocol" not in keys
    assert set(httpclient.KEYS) <= set(xmlrpc.KEYS)
    assert set(sql.SQL_KEYS) <= set(postgresql.KEYS) and set(sql.SQL_KEYS) <= set(oracle.KEYS)


INTERFACE_KEYS = {"http": HttpInterface.keys, "xmlrpc": xmlrpc.Interface.keys}
RESOURCE_SCHEMAS = {"http": httpclient.KEYS, "xmlrpc": xmlrpc.KEYS, "postgresql": postgresql.KEYS,
                    "oracle": oracle.KEYS, "mongodb": mongodb.KEYS}
TEMPLATES = sorted(path for folder in (".shared", "sample") for path in (ROOT / "cages" / folder).glob("config_*.py"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_shipped_configs_are_clean(path: Path) -> None:
    """The templates in cages/.shared and the sample cage's configs hold only known keys."""
    namespace: dict[str, Any] = {}
    exec(path.read_text(), namespace)
    config = dict(namespace.get("config", {}))
    protocol = config.pop("protocol", None)
    if path.name.startswith("config_interface_") and protocol in INTERFACE_KEYS:
        INTERFACE_KEYS[protocol].read(config, path.name)
    elif path.name.startswith("config_resource_") and protocol in RESOURCE_SCHEMAS:
        POOL_KEYS.read({k: config.pop(k) for k in list(config) if k.startswith("pool__")}, path.name)
        RESOURCE_SCHEMAS[protocol].read(config, path.name)


@pytest.mark.parametrize("make, config, typo, hint", [
    (httpclient.Resource, {"server_address": ("127.0.0.1", 80)}, "conect_timeout", "connect_timeout"),
    (xmlrpc.Resource, {"server_address": ("127.0.0.1", 80), "server_uri": "/x"}, "alow_none", "allow_none"),
    (postgresql.Resource, {"database": "db"}, "prepare_treshold", "prepare_threshold"),
    (oracle.Resource, {"database": "FREEPDB1", "username": "u"}, "pasword", "password"),
    (mongodb.Resource, {"server_address": ("127.0.0.1", 27017), "database": "d"}, "databse", "database"),
])
def test_each_resource_refuses_a_typo_by_file_and_key(make: Callable[[str, dict[str, Any]], Any],
                                                      config: dict[str, Any], typo: str, hint: str) -> None:
    make("db__x/1", {**config, "resource_name": "x"})  # fine without the typo
    with pytest.raises(ConfigError) as info:
        make("db__x/1", {**config, typo: 1})
    assert str(info.value) == f"config_resource_db.py: unknown config key: {typo} (did you mean {hint}?)"


# --- what a user sees ---------------------------------------------------------------------------------


def test_an_interface_with_a_typo_does_not_start_until_its_config_is_fixed(
        cage_process: Callable[..., CageProcess]) -> None:
    cage = cage_process(interfaces={"http": http_config(max_conections=5)})
    line = cage.wait_for_log(r"ERR \[cage\] interface http failed to start: .*").group(0)
    assert line.startswith('ERR [cage] interface http failed to start: ConfigError("config_interface_http.py: '
                           'unknown config key: max_conections (did you mean max_connections?)"), next attempt in ')
    assert "the cage is ready, 0 interface(s) serving, 1 failed to start: http" in cage.log_text()
    assert "interface http has started" not in cage.log_text()
    assert "listens on" not in cage.log_text()
    failures = re.findall(r"interface http failed to start: .*", cage.log_text())
    assert len({re.sub(r"\d+", "N", f) for f in failures}) == 1, "retries say the same (the log folds them)"
    write_file(cage.cage_dir / "config_interface_http.py", config_source(http_config(max_connections=5)))
    port = cage.port()
    assert http_request(port)[2] == b"Hello, world !"

    # a typo in the config of a live interface: the old one keeps serving
    write_file(cage.cage_dir / "config_interface_http.py", config_source(http_config(keep_alive_suport=False)))
    cage.wait_for_log(r'interface http keeps its old configuration, the new one is refused: ConfigError\('
                      r'"config_interface_http.py: unknown config key: keep_alive_suport '
                      r'\(did you mean keep_alive_support\?\)"\)')
    assert http_request(port)[2] == b"Hello, world !"


CALLER = module_source("""
    def process_request(request, response):
        try:
            pmnc.transaction.web.get("/")
            response["content"] = "no error"
        except Exception as e:
            response["content"] = str(e)
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


def test_a_resource_with_a_typo_fails_the_call_naming_file_and_key(
        in_process_cage: Callable[..., InProcessCage], tmp_path: Path) -> None:
    resource = {"protocol": "http", "sever_address": ("127.0.0.1", 9), "pool__size": 1}
    cage = in_process_cage(interfaces={"http": http_config()},
                           files={"interface_http.py": CALLER, "config_resource_web.py": config_source(resource)})
    status, _, body = http_request(cage.address()[1])
    assert status == 200
    assert "config_resource_web.py: unknown config key: sever_address (did you mean server_address?)" in body.decode()


def test_the_originals_ssl_protocol_is_logged_not_silently_ignored() -> None:
    from pmnc.protocols import http, httpclient
    for keys in (http.Interface.keys, httpclient.KEYS):
        note = keys["ssl_protocol"].note
        assert note is not None and note(None) is None
        assert "TLS 1.2 or later" in (note("TLSv1") or "")
