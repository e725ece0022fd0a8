"""Resources written for the original: a cage's own original-style `protocol_<p>.py`, the
original's protocol names and config files against a real PostgreSQL, and the
`pool__cache_*` result cache.

The cage's own protocol is written the original way - `pmnc.resource_pool.TransactionalResource`,
`Resource(name, **config)`, `begin_transaction(xid, **kwargs)` - and keeps its committed
data in a JSON file, so what a commit or a rollback did is read back from disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcessCage, config_source, module_source, wait_until
from pg_peer import PgServer
from pmnc.cache import ResultCache
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError
from pmnc.loader import protocol_class
from pmnc.protocols import oracle
from pmnc.request import Request
from pmnc.resource import Resource as PmncResource
from pmnc.resource_pool import ResourcePoolEmpty, TransactionalResource

FILESTORE = module_source("""
    import itertools
    import json
    import time

    from pmnc.resource_pool import TransactionalResource, ResourceError

    CALLS = itertools.count(1)  # every call that really ran

    class Resource(TransactionalResource):

        _default_idle_timeout = 7.0

        def __init__(self, name, *, path, pool__resource_name=None, **config):
            TransactionalResource.__init__(self, name)
            self._path, self._suffix = path, pool__resource_name

        def connect(self):
            TransactionalResource.connect(self)
            self._pending = None

        def begin_transaction(self, xid, **kwargs):
            TransactionalResource.begin_transaction(self, xid, **kwargs)
            with open(self._path) as f:
                self._pending = json.load(f)

        def set(self, **values):
            self._pending.update(values)

        def get(self, key):
            return self._pending.get(key)

        def fail(self):
            raise ResourceError(description="refused", code=7, recoverable=True, terminal=False)

        def drop(self):
            self.expire()
            return self.expired

        def whoami(self):
            return dict(name=self.name, xid=self.xid, source=self.source_module_name,
                        options=self.transaction_options, args=self.resource_args,
                        kwargs=self.resource_kwargs, pool=(self.pool_name, self.pool_size),
                        suffix=self._suffix, idle_timeout=self.idle_timeout, alive=0 < self.ttl <= 7.0)

        def stamp(self, *args, **kwargs):
            return [next(CALLS)]

        def slow_stamp(self, key):
            time.sleep(0.3)
            return [next(CALLS)]

        def nothing(self):
            next(CALLS)
            return None

        def commit(self):
            with open(self._path, "w") as f:
                json.dump(self._pending, f)

        def rollback(self):
            self._pending = None
""", ["Resource"])

APP = module_source("""
    def put(**values):
        xa = pmnc.transaction.create()
        xa.store.set(**values)
        return xa.execute()

    def put_then_fail(key, value):
        xa = pmnc.transaction.create()
        xa.store.set(**{key: value})
        xa.store.fail()
        xa.execute()

    def details():
        xa = pmnc.transaction.create(note="x")
        xa.store("a", mode="ro").whoami()
        xa.store__b.whoami()
        return xa.execute()
""", ["put", "put_then_fail", "details"])


def start_store(in_process_cage: Callable[..., InProcessCage], tmp_path: Path, **cached: Any) -> InProcessCage:
    data = tmp_path / "store.json"
    data.write_text("{}")
    files = {"protocol_filestore.py": FILESTORE, "app.py": APP,
             "config_resource_store.py": config_source({"protocol": "filestore", "path": str(data),
                                                        "pool__size": 2}),
             "config_resource_cached.py": config_source({"protocol": "filestore", "path": str(data),
                                                         "pool__size": 3, "pool__cache_size": 10, **cached})}
    return in_process_cage(files=files)


def committed(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "store.json").read_text())  # type: ignore[no-any-return]


# --- a cage's own original-style protocol ----------------------------------------------------


def test_an_original_style_resource_commits_and_rolls_back_through_pmnc_transaction(
        in_process_cage: Callable[..., InProcessCage], tmp_path: Path, attach: Callable[[float], Request]) -> None:
    pmnc = start_store(in_process_cage, tmp_path).cage.runtime.root
    attach(5.0)
    assert pmnc.app.put(a=1, b=2) == (None,)
    assert committed(tmp_path) == {"a": 1, "b": 2}
    with pytest.raises(ResourceError) as info:
        pmnc.app.put_then_fail("a", 100)
    assert str(info.value) == "7: refused" and info.value.recoverable and info.value.participant_index == 1
    assert committed(tmp_path) == {"a": 1, "b": 2}, "the failed transaction was rolled back"
    assert pmnc.transaction.store.get("b") == 2


def test_an_original_style_resource_sees_what_the_original_gave_it(
        in_process_cage: Callable[..., InProcessCage], tmp_path: Path, attach: Callable[[float], Request]) -> None:
    pmnc = start_store(in_process_cage, tmp_path).cage.runtime.root
    attach(5.0)
    mine, other = pmnc.app.details()
    assert mine["xid"].startswith("XA") and mine["xid"] == other["xid"]
    assert mine["source"] == "app" and mine["options"] == {"note": "x"}
    assert (mine["args"], mine["kwargs"]) == (("a",), {"mode": "ro"})
    assert mine["pool"] == ("store", 2) and mine["suffix"] is None and other["suffix"] == "b"
    assert mine["idle_timeout"] == 7.0 and mine["alive"], "the class's _default_idle_timeout, no pool__ key"
    first = pmnc.transaction.store.whoami()["name"]
    assert pmnc.transaction.store.drop() is True
    assert pmnc.transaction.store.whoami()["name"] != first, "an expired connection is not reused"


def test_the_original_names_of_pool_errors_are_pmncs() -> None:
    assert issubclass(ResourcePoolEmpty, ResourceError)
    assert issubclass(TransactionalResource, PmncResource)
    with pytest.raises(ImportError, match=r"SQLRecord: rows are pmnc\.protocols\.sql\.Row"):
        from pmnc.resource_pool import SQLRecord  # noqa: F401


# --- the original's protocol names ----------------------------------------------------------------


def original_pg_config(pg: PgServer, protocol: str, **extra: Any) -> str:
    """A config file as the original's .shared templates are written."""
    return config_source({"protocol": protocol, "decimal_precision": (10, 2),
                          "server_address": ("127.0.0.1", pg.port), "connect_timeout": 3.0,
                          "database": "db1", "username": "postgres", "password": "pass", **extra})


def test_the_original_postgresql_protocol_names_run_pmncs_postgresql(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, attach: Callable[[float], Request]) -> None:
    cage = in_process_cage(files={
        "config_resource_postgresql_1.py": original_pg_config(pg, "postgresql_pg8000", server_encoding=None),
        "config_resource_postgresql_2.py": original_pg_config(pg, "postgresql_psycopg"),
        "config_resource_encoded.py": original_pg_config(pg, "postgresql_pg8000", server_encoding="win1251"),
        "config_resource_mysql_1.py": config_source({"protocol": "mysql_pymysql", "server_address": ("h", 1)})})
    transaction = cage.cage.runtime.root.transaction
    attach(5.0)
    assert transaction.postgresql_1.execute("SELECT {x} AS x", x=1) == ([{"x": 1}],)
    assert transaction.postgresql_2.execute("SELECT current_database() AS db") == ([{"db": "db1"}],)
    with pytest.raises(ResourceError, match="server_encoding is not needed any more, remove it"):
        transaction.encoded.execute("SELECT 1")
    with pytest.raises(ConfigError, match=r"protocol 'mysql_pymysql' of resource mysql_1 is one of the original's "
                                          r"that pmnc does not have: pmnc has no MySQL resource: write a "
                                          r"protocol_mysql_pymysql.py of the cage's own"):
        transaction.mysql_1.execute("SELECT 1")


def test_oracle_cx_takes_its_database_as_the_sid(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = in_process_cage()
    cls = protocol_class(cage.cage.loader, "oracle_cx", "Resource", PmncResource, "resource oracle_1")
    assert cls is oracle.SidResource
    made = cls._construct("oracle_1/1", {"decimal_precision": (10, 2), "server_address": ("db", 1521),
                                         "database": "ORCL", "username": "user", "password": "pass"})
    assert made.params["sid"] == "ORCL" and "service_name" not in made.params  # type: ignore[attr-defined]


# --- the pool__cache_* result cache -------------------------------------------------------------


def test_identical_calls_are_answered_from_the_cache(in_process_cage: Callable[..., InProcessCage],
                                                     tmp_path: Path, attach: Callable[[float], Request]) -> None:
    transaction = start_store(in_process_cage, tmp_path).cage.runtime.root.transaction
    attach(5.0)
    first = transaction.cached.stamp("a", k=1)
    assert transaction.cached.stamp("a", k=1) == first
    assert transaction.cached.stamp("a", k=2) != first and transaction.cached.stamp("b", k=1) != first
    assert transaction.cached.stamp("a", k=1, pool__cache_key=None) != first, "None: the call runs"
    returned = transaction.cached.stamp("a", k=1)
    returned.append("changed by the caller")
    assert transaction.cached.stamp("a", k=1) == first, "values are copied in and out"
    # a literal key, a key function, a wrapped result
    keyed = transaction.cached.stamp("x", pool__cache_key="same")
    assert transaction.cached.stamp("y", pool__cache_key="same") == keyed
    by_first_arg = transaction.cached.stamp("p", 1, pool__cache_key=lambda attrs, args, kwargs: args[0])
    assert transaction.cached.stamp("p", 2, pool__cache_key=lambda attrs, args, kwargs: args[0]) == by_first_arg
    wrapped = transaction.cached.stamp("w", pool__cache_wrap=lambda value: ("wrapped", value))
    assert wrapped[0] == "wrapped" and transaction.cached.stamp("w") == wrapped
    # None is never cached
    assert transaction.cached.nothing() is None and transaction.cached.nothing() is None
    assert transaction.cached.stamp("fresh")[0] - transaction.cached.stamp("fresh2")[0] == -1


def test_an_entry_lives_its_ttl(in_process_cage: Callable[..., InProcessCage], tmp_path: Path,
                                attach: Callable[[float], Request]) -> None:
    transaction = start_store(in_process_cage, tmp_path).cage.runtime.root.transaction
    attach(10.0)
    first = transaction.cached.stamp("t", pool__cache_ttl=0.3)
    assert transaction.cached.stamp("t") == first
    wait_until(lambda: transaction.cached.stamp("t", pool__cache_ttl=60.0) != first, 5.0, message="expiry")
    renewed = transaction.cached.stamp("t")
    assert renewed != first and transaction.cached.stamp("t") == renewed


def test_a_pool_default_ttl_applies(in_process_cage: Callable[..., InProcessCage], tmp_path: Path,
                                    attach: Callable[[float], Request]) -> None:
    transaction = start_store(in_process_cage, tmp_path, pool__cache_default_ttl=0.3).cage.runtime.root.transaction
    attach(10.0)
    first = transaction.cached.stamp("t")
    wait_until(lambda: transaction.cached.stamp("t") != first, 5.0, message="expiry")


def test_writes_invalidate_the_reads_they_share_a_key_with(
        in_process_cage: Callable[..., InProcessCage], tmp_path: Path, attach: Callable[[float], Request]) -> None:
    transaction = start_store(in_process_cage, tmp_path).cage.runtime.root.transaction
    attach(5.0)
    read = transaction.cached.stamp("r", pool__cache_read_keys={"t", "t/1"})
    other = transaction.cached.stamp("o", pool__cache_read_keys={"u"})
    assert transaction.cached.stamp("r", pool__cache_read_keys={"t", "t/1"}) == read
    written = transaction.cached.stamp("w", pool__cache_write_keys=["t/1"])
    assert transaction.cached.stamp("w", pool__cache_write_keys=["t/1"]) != written, "writes are never cached"
    assert transaction.cached.stamp("r", pool__cache_read_keys={"t", "t/1"}) != read
    assert transaction.cached.stamp("o", pool__cache_read_keys={"u"}) == other


def test_identical_calls_in_flight_run_once(in_process_cage: Callable[..., InProcessCage], tmp_path: Path,
                                            attach: Callable[[float], Request]) -> None:
    cage = start_store(in_process_cage, tmp_path)
    attach(5.0)
    xa = cage.cage.runtime.root.transaction.create()
    xa.cached.slow_stamp("same")
    xa.cached.slow_stamp("same")
    before = next(cage.cage.loader.current("protocol_filestore").module.CALLS)
    one, two = xa.execute()
    after = next(cage.cage.loader.current("protocol_filestore").module.CALLS)
    assert one == two and after - before == 2, "one of the two ran, the other waited for its result"


def test_cache_keys_that_do_not_exist_are_refused(in_process_cage: Callable[..., InProcessCage], tmp_path: Path,
                                                  attach: Callable[[float], Request]) -> None:
    transaction = start_store(in_process_cage, tmp_path).cage.runtime.root.transaction
    attach(5.0)
    for resource in (transaction.cached, transaction.store):  # with a cache and without
        with pytest.raises(ResourceInputParameterError, match="pool__cache_tll is not a cache option of a call"):
            resource.stamp("a", pool__cache_tll=1.0)
    with pytest.raises(ResourceInputParameterError, match="pool__cache_ttl must be a number of seconds"):
        transaction.cached.stamp("a", pool__cache_ttl="soon")
    with pytest.raises(ResourceInputParameterError, match=r"either reads .* or writes"):
        transaction.cached.stamp("a", pool__cache_read_keys={"t"}, pool__cache_write_keys={"t"})
    assert transaction.store.stamp("a", pool__cache_ttl=1.0) != transaction.store.stamp("a", pool__cache_ttl=1.0), \
        "a pool without pool__cache_size caches nothing, and its calls never see the pool__cache_ keys"


def test_a_bad_cache_config_is_refused_with_its_key(in_process_cage: Callable[..., InProcessCage],
                                                    tmp_path: Path, attach: Callable[[float], Request]) -> None:
    transaction = start_store(in_process_cage, tmp_path, pool__cache_policy="fifo").cage.runtime.root.transaction
    attach(5.0)
    with pytest.raises(ConfigError, match=r"config_resource_cached.py: pool__cache_policy must be one of lru, lfu, "
                                          r"weight, useless, old, random, not 'fifo'"):
        transaction.cached.stamp("a")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def filled(policy: str, clock: Clock) -> ResultCache:
    """Four entries in a cache of three: 1 was used longest ago, 2 least often, 3 is the
    cheapest and saved least, 4 alone expires."""
    cache = ResultCache("db", size=3, policy=policy, evict_period=1.0, clock=clock)
    for key, weight, ttl in ((1, 2.0, None), (2, 5.0, None), (3, 1.0, None), (4, 3.0, 5.0)):
        clock.now += 0.1
        assert cache.get(key, pool__cache_timeout=1.0, pool__cache_transaction_id=key) is None
        cache.put(key, f"v{key}", pool__cache_transaction_id=key, pool__cache_weight=weight, pool__cache_ttl=ttl)
    for key, hits in ((1, 3), (2, 1), (3, 2), (4, 2)):
        for _ in range(hits):
            clock.now += 0.01
            assert cache.get(key, pool__cache_timeout=1.0, pool__cache_transaction_id=99) == f"v{key}"
    clock.now += 1.0
    cache.purge()
    return cache


@pytest.mark.parametrize("policy, evicted", [("lru", 1), ("lfu", 2), ("weight", 3), ("useless", 3), ("old", 4)])
def test_eviction_follows_the_policy(policy: str, evicted: int) -> None:
    clock = Clock()
    cache = filled(policy, clock)
    left = [key for key in (1, 2, 3, 4)
            if cache.get(key, pool__cache_timeout=0.0, pool__cache_transaction_id=100 + key) is not None]
    assert len(left) == 3 and evicted not in left


def test_a_call_may_bring_its_own_cache_get_and_put(in_process_cage: Callable[..., InProcessCage],
                                                    tmp_path: Path, attach: Callable[[float], Request]) -> None:
    transaction = start_store(in_process_cage, tmp_path).cage.runtime.root.transaction
    attach(5.0)
    mine: dict[Any, Any] = {}

    def get(key: Any, **kwargs: Any) -> Any:
        return None if key not in mine else ("from mine", mine[key])

    def put(key: Any, value: Any, **kwargs: Any) -> None:
        if value is not None:
            mine[key] = value

    first = transaction.cached.stamp("c", pool__cache_get=get, pool__cache_put=put)
    assert mine == {(("stamp",), ("c",), frozenset()): first}
    assert transaction.cached.stamp("c", pool__cache_get=get, pool__cache_put=put) == ("from mine", first)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cache down")

    assert transaction.cached.stamp("d", pool__cache_get=broken) != transaction.cached.stamp("d"), \
        "a cache that fails is bypassed: the call runs and its result is not cached"
