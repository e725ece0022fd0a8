"""The MongoDB resource (protocol "mongodb") against a real wire-protocol server, nx-27017.

Calls go through one in-process cage (started once for this module) as a
cage module makes them: `xa = pmnc.transaction.create(); xa.mongo.<coll>.find()`
with a finite request attached to the test thread. Each test works in its
own collection. Tests that suspend or kill a server use a private nx-27017.

What nx-27017 can show, and what it cannot (tests/mongo_peer.py starts it):
- It is a standalone server (hello has no setName), so `transactions="auto"`
  makes the resource a last resource there: each call takes effect as it
  runs and a rollback cannot undo it.
- It accepts session transactions all the same (a real standalone mongod
  would refuse them), so `transactions=True` exercises commit and abort:
  one transaction at a time, both work.
- It does not isolate: a transaction's uncommitted writes are visible to
  everyone (shown below), and concurrent transactions break each other (one
  SQLite savepoint stack); isolation, write conflicts and the retry of a
  TransientTransactionError cannot be tested against it.
- Its only server error codes are 11000 (duplicate key) and 8 (any other
  write error); other failed commands carry no code, and a command it does
  not know is answered {"ok": 1}. Its find refuses `$where`, its count and
  aggregate match nothing with it. It cannot store Decimal128, nor keep a
  UUID's subtype, nor make collections with dots in their names. It ignores
  maxTimeMS, so deadlines are shown with a suspended (SIGSTOP) or killed
  server, and that maxTimeMS is sent, with pymongo's command monitoring.
"""

from __future__ import annotations

import datetime
import decimal
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from bson.int64 import Int64
from bson.objectid import ObjectId
from conftest import InProcessCage, config_source, make_tree, wait_until
from mongo_peer import MongoPeer, free_port
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError, TransactionExecutionError
from pmnc.pools import ResourcePool
from pmnc.protocols.mongodb import CODEC_OPTIONS, Resource, _translate
from pmnc.request import Request
from pymongo import errors, monitoring

DATABASE = "pmnc_test"
MARGIN = 0.5  # what a failure may take past its deadline (thread hand-offs, a loaded machine)
STEP = 0.5  # pymongo waits for an unreachable server in steps of this (MIN_HEARTBEAT_INTERVAL)
CAP = 0.3  # pool__max_time of the resources whose server is suspended or killed


# --- fixtures -------------------------------------------------------------------------------------------


def resource_config(address: tuple[str, int], **overrides: Any) -> dict[str, Any]:
    return {"protocol": "mongodb", "server_address": address, "database": DATABASE, "pool__size": 4, **overrides}


@pytest.fixture(scope="module")
def cage(mongo_peer: MongoPeer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessCage]:
    """One cage for the module: `mongo` (auto: a last resource on nx), `mongotx` (session
    transactions forced), `reuse` (for counting connections), `dead` (a closed port)."""
    files = {
        "config_resource_mongo.py": config_source(resource_config(mongo_peer.address)),
        "config_resource_mongotx.py": config_source(resource_config(mongo_peer.address, transactions=True)),
        "config_resource_reuse.py": config_source(resource_config(mongo_peer.address)),
        "config_resource_dead.py": config_source(resource_config(("127.0.0.1", free_port()), connect_timeout=0.5)),
    }
    running = InProcessCage(make_tree(tmp_path_factory.mktemp("mongo-cage"), files=files)).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def peek(mongo_peer: MongoPeer) -> Iterator[pymongo.database.Database[dict[str, Any]]]:
    """The test database seen by a plain pymongo client of its own: the outside view."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_peer.uri, serverSelectionTimeoutMS=5000)
    try:
        yield client[DATABASE]
    finally:
        client.close()


@pytest.fixture
def coll(request: pytest.FixtureRequest) -> str:
    """A collection of this test's own (nx takes letters, digits and underscores)."""
    return "c_" + re.sub(r"\W", "_", request.node.name)[:40] + "_" + uuid.uuid4().hex[:6]


@pytest.fixture
def private_peer(tmp_path: Path) -> Iterator[MongoPeer]:
    """An nx-27017 of this test's own, to suspend or kill."""
    peer = MongoPeer(tmp_path / "nx").start()
    try:
        yield peer
    finally:
        peer.stop()


def xa(cage: InProcessCage, **options: Any) -> Any:
    return cage.cage.runtime.root.transaction.create(**options)


def one(cage: InProcessCage) -> Any:
    """`pmnc.transaction`: its shortcut `.<resource>.<coll>.<op>(...)` is a one-call transaction."""
    return cage.cage.runtime.root.transaction


def run(cage: InProcessCage, register: Callable[[Any], Any]) -> Any:
    """The one result of a transaction whose call `register(xa)` makes (for `xa.mongo(...)` forms)."""
    t = xa(cage)
    register(t)
    return t.execute()[0]


def pool(cage: InProcessCage, name: str) -> ResourcePool:
    return cage.cage.runtime.resources.get(name)


def settled(cage: InProcessCage, name: str) -> None:
    """Every connection of the pool is back: its participants have finished. After a rollback
    execute() does not wait for them to abort, and nx-27017 cannot run the next transaction
    while one is still open."""
    p = pool(cage, name)
    wait_until(lambda: p.free == p._count, 5.0, message=f"pool {name} idle")


def fails(call: Callable[[], Any], kind: type[BaseException] = ResourceError) -> tuple[Any, float]:
    began = time.monotonic()
    with pytest.raises(kind) as info:
        call()
    return info.value, time.monotonic() - began


def add_resource(cage: InProcessCage, name: str, config: dict[str, Any]) -> None:
    """A resource config written into the running cage: read when its pool is first used."""
    (cage.cage_dir / f"config_resource_{name}.py").write_text(config_source(config))


# --- operations -----------------------------------------------------------------------------------------


def test_insert_one_and_find(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    document = {"name": "tea", "qty": 2, "tags": ["hot", "leaf"], "size": {"w": 1.5}}
    inserted = getattr(one(cage).mongo, coll).insert_one(document)
    assert isinstance(inserted, ObjectId), "_id values stay ObjectId"
    assert "_id" not in document, "the caller's document is not modified"
    found = getattr(one(cage).mongo, coll).find({"_id": inserted})
    assert found == [{"_id": inserted, **document}]
    assert type(found[0]) is dict and type(found[0]["size"]) is dict
    assert getattr(one(cage).mongo, coll).find({"name": "coffee"}) == []


def test_find_filter_projection_sort_skip_limit(cage: InProcessCage, coll: str,
                                                attach: Callable[[float], Request]) -> None:
    attach(5.0)
    t = xa(cage)
    getattr(t.mongo, coll).insert_many([{"n": n, "even": n % 2 == 0, "pad": "x" * n} for n in range(10)])
    (ids,) = t.execute()
    assert len(ids) == 10 and all(isinstance(i, ObjectId) for i in ids)
    c = getattr(one(cage).mongo, coll)
    assert c.find({"even": True}, {"_id": 0, "n": 1}, sort=[("n", -1)]) == [{"n": n} for n in (8, 6, 4, 2, 0)]
    assert c.find(None, ["n"], sort={"n": 1}, skip=3, limit=2) == [{"_id": ids[3], "n": 3}, {"_id": ids[4], "n": 4}]
    assert c.find_one({"n": {"$gte": 7}}, {"_id": 0, "n": 1}, sort=[("n", 1)]) == {"n": 7}
    assert c.find_one({"n": 99}) is None
    assert len(c.find()) == 10, "limit 0 reads the whole cursor"


def test_update_and_delete(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = getattr(one(cage).mongo, coll)
    c.insert_many([{"k": k, "v": 0} for k in "aabc"])
    assert c.update_one({"k": "a"}, {"$inc": {"v": 1}}) == {"matched": 1, "modified": 1, "upserted_id": None}
    assert c.update_many({"k": "a"}, {"$set": {"w": True}}) == {"matched": 2, "modified": 2, "upserted_id": None}
    assert c.update_one({"k": "zz"}, {"$set": {"v": 9}}) == {"matched": 0, "modified": 0, "upserted_id": None}
    upserted = c.update_one({"k": "d"}, {"$set": {"v": 5}}, upsert=True)
    assert (upserted["matched"], upserted["modified"]) == (0, 0) and isinstance(upserted["upserted_id"], ObjectId)
    assert sorted(d["v"] for d in c.find({}, {"_id": 0, "v": 1})) == [0, 0, 0, 1, 5]
    assert c.delete_one({"k": "a"}) == 1
    assert c.delete_one({"k": "nothing"}) == 0
    assert c.delete_many({"k": {"$in": ["a", "b", "c"]}}) == 3
    assert c.find({}, {"_id": 0, "k": 1}) == [{"k": "d"}]


def test_aggregate_and_count_documents(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = getattr(one(cage).mongo, coll)
    c.insert_many([{"shop": s, "sum": n} for s, n in (("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5))])
    grouped = c.aggregate([{"$match": {"sum": {"$gt": 1}}}, {"$group": {"_id": "$shop", "total": {"$sum": "$sum"}}},
                           {"$sort": {"_id": 1}}])
    assert grouped == [{"_id": "a", "total": 8}, {"_id": "b", "total": 2}, {"_id": "c", "total": 4}]
    assert c.count_documents({"shop": "a"}) == 3
    assert c.count_documents() == 5 and isinstance(c.count_documents(), int)
    assert c.count_documents({"shop": {"$in": ["b", "c"]}}) == 2


def test_command(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    assert one(cage).mongo.command("ping")["ok"] == 1
    getattr(one(cage).mongo, coll).insert_one({"x": 1})
    reply = one(cage).mongo.command({"count": coll})
    assert type(reply) is dict and (reply["ok"], reply["n"]) == (1, 1)
    assert one(cage).mongo.command("count", coll, query={"x": 2})["n"] == 0, "pymongo's (name, value, **kwargs)"


def test_several_calls_in_one_transaction(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    getattr(one(cage).mongo, coll).insert_one({"a": 1})
    t = xa(cage)
    getattr(t.mongo, coll).count_documents({})
    t.mongo.command("ping")
    getattr(t.mongo, coll).find({}, {"_id": 0})
    assert t.execute() == (1, {"ok": 1}, [{"a": 1}])


def test_collection_names(cage: InProcessCage, coll: str, peek: Any, attach: Callable[[float], Request]) -> None:
    """`xa.mongo.<coll>`; names the resource itself uses go as `xa.mongo(collection=...)`; `a.b` is "a.b"."""
    attach(5.0)
    t = xa(cage)
    t.mongo(collection=coll).insert_one({"via": "kwarg"})
    t.mongo(coll).insert_one({"via": "arg"})
    t.execute()
    assert run(cage, lambda t: t.mongo(collection=coll).count_documents({})) == 2
    assert peek[coll].count_documents({}) == 2
    assert run(cage, lambda t: t.mongo(collection="config").count_documents({})) == 0, "a lifecycle name"
    error, _ = fails(lambda: one(cage).mongo.config.find())
    assert isinstance(error, ResourceInputParameterError), "xa.mongo.config is the lifecycle's, never a collection"
    error, _ = fails(lambda: one(cage).mongo.find({}), ResourceInputParameterError)
    assert "needs a collection" in str(error)
    # a sub-collection reaches the server as "<coll>.sub": nx finds nothing there and cannot create one
    assert getattr(one(cage).mongo, coll).sub.find() == []
    error, _ = fails(lambda: getattr(one(cage).mongo, coll).sub.insert_one({"x": 1}))
    assert f"{coll}.sub" in str(error) and not error.terminal
    for bad in ("", "a$b", "a..b", ".a"):
        fails(lambda bad=bad: run(cage, lambda t: t.mongo(collection=bad).find()), ResourceInputParameterError)
    fails(lambda: run(cage, lambda t: t.mongo("a", "b").find()), ResourceInputParameterError)
    fails(lambda: run(cage, lambda t: t.mongo(database="other").find()), ResourceInputParameterError)


def test_values_come_back_as_plain_python(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = getattr(one(cage).mongo, coll)
    when = datetime.datetime(2024, 2, 29, 12, 30, 1, 123000, tzinfo=datetime.UTC)
    _id = c.insert_one({"when": when, "big": 2**40, "blob": b"\x00\xff", "none": None})
    got = c.find_one({"_id": _id})
    assert got == {"_id": _id, "when": when, "big": 2**40, "blob": b"\x00\xff", "none": None}
    assert type(got["big"]) is int and got["when"].utcoffset() == datetime.timedelta(0), "aware UTC datetimes"
    # nx-27017 cannot store Decimal128 (it keeps JSON) nor keep a UUID's subtype: the codec, on its own
    raw = bson.encode({"price": decimal.Decimal("12.50"), "n": Int64(7), "u": uuid.UUID(int=1)},
                      codec_options=CODEC_OPTIONS)
    back = bson.decode(raw, codec_options=CODEC_OPTIONS)
    assert back == {"price": decimal.Decimal("12.50"), "n": 7, "u": uuid.UUID(int=1)}
    assert type(back["price"]) is decimal.Decimal and type(back["n"]) is int
    assert bson.decode(raw)["price"] == bson.Decimal128("12.50"), "on the wire it is a Decimal128"


# --- errors ---------------------------------------------------------------------------------------------


def test_duplicate_key_is_code_11000_and_keeps_the_connection(
        cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    one(cage).reuse.command({"createIndexes": coll, "indexes": [{"key": {"k": 1}, "name": "k_1", "unique": True}]})
    c = getattr(one(cage).reuse, coll)
    c.insert_one({"k": 1})
    error, _ = fails(lambda: c.insert_one({"k": 1}))
    assert (error.code, error.recoverable, error.terminal) == (11000, False, False)
    assert str(error).startswith("11000: ")
    error, _ = fails(lambda: c.insert_many([{"k": 2}, {"k": 2}]))
    assert (error.code, error.terminal) == (11000, False), "a bulk write's first write error's code"
    error, _ = fails(lambda: c.update_one({"k": 2}, {"$set": {"k": 1}}))
    assert error.code == 11000
    assert c.count_documents({}) == 2, "the first of the two k=2 went in: nx's insert_many is ordered"
    assert "connections=1/" in repr(pool(cage, "reuse")), "server errors do not discard the connection"


def test_server_errors_carry_their_codes(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    """nx-27017 has code 8 for every write error but duplicates, and no code for failed commands."""
    attach(5.0)
    c = getattr(one(cage).mongo, coll)
    c.insert_one({"a": 1})
    error, _ = fails(lambda: c.update_one({"a": 1}, {"$bogus": {"a": 2}}))
    assert (error.code, error.recoverable, error.terminal) == (8, False, False) and "$bogus" in str(error)
    error, _ = fails(lambda: c.aggregate([{"$bogus": 1}]))
    assert (error.code, error.terminal) == (None, False) and "$bogus" in str(error)
    error, _ = fails(lambda: one(cage).mongo.command({"find": 5}))
    assert (error.code, error.terminal) == (None, False)
    assert one(cage).mongo.command("noSuchCommand") == {"ok": 1, "result": []}, \
        "nx answers a command it does not know (MongoDB would fail with code 59)"
    assert c.count_documents({}) == 1


def test_injection_like_filters(cage: InProcessCage, coll: str, peek: Any,
                                attach: Callable[[float], Request]) -> None:
    """Strings are data, never evaluated here; `$where` (server-side JavaScript) is nx-27017's
    business: its find refuses it, its count and aggregate match nothing (a real MongoDB runs it
    unless javascriptEnabled is off). Nothing is evaluated anywhere."""
    attach(5.0)
    c = getattr(one(cage).mongo, coll)
    hostile = "'; db.dropDatabase(); var x = '"
    _id = c.insert_one({"name": hostile, "op": "$where"})
    assert c.find({"name": hostile}) == [{"_id": _id, "name": hostile, "op": "$where"}]
    assert c.find({"name": "' || '1'=='1"}) == []
    error, _ = fails(lambda: c.find({"$where": "sleep(1000) || true"}))
    assert "$where" in str(error) and "not supported" in str(error) and not error.terminal
    assert c.count_documents({"$where": "this.name.length > 0"}) == 0, "nx: matches nothing, silently"
    assert c.aggregate([{"$match": {"$where": "true"}}]) == []
    assert peek[coll].count_documents({}) == 1 and DATABASE in peek.client.list_database_names()


def test_bad_arguments_send_nothing_and_keep_the_connection(
        cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = getattr(one(cage).reuse, coll)
    c.insert_one({"a": 1})
    calls: list[Callable[[], Any]] = [
        lambda: c.insert_one("not a dict"), lambda: c.insert_one(None), lambda: c.insert_many([]),
        lambda: c.insert_many([{"a": 1}, 2]), lambda: c.insert_many({"a": 1}),
        lambda: c.find("a == 1"), lambda: c.find({}, 5), lambda: c.find({}, sort="a"),
        lambda: c.find({}, sort=[("a", 2)]), lambda: c.find({}, skip=-1), lambda: c.find({}, limit=True),
        lambda: c.update_one({}, {"a": 2}), lambda: c.update_one({}, {}), lambda: c.update_many(None, {"$set": {}}),
        lambda: c.delete_one(None), lambda: c.delete_many("all"), lambda: c.aggregate({"$match": {}}),
        lambda: c.aggregate(["$match"]), lambda: c.count_documents([]), lambda: one(cage).reuse.command(5),
        lambda: c.insert_one({"bad": object()}),  # refused by the BSON encoder, before sending
    ]
    for call in calls:
        error, _ = fails(call, ResourceInputParameterError)
        assert error.recoverable and not error.terminal
    assert c.find({}, {"_id": 0}) == [{"a": 1}]
    assert "connections=1/" in repr(pool(cage, "reuse"))


@pytest.mark.parametrize(("raised", "kind", "code", "recoverable", "terminal"), [
    (errors.OperationFailure("no such command: 'x'", 59), ResourceError, 59, False, False),
    (errors.DuplicateKeyError("E11000 duplicate key", 11000), ResourceError, 11000, False, False),
    (errors.BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup"}]}),
     ResourceError, 11000, False, False),
    (errors.OperationFailure("WriteConflict", 112, {"errorLabels": ["TransientTransactionError"]}),
     ResourceError, 112, True, False),
    (errors.ExecutionTimeout("operation exceeded time limit", 50), ResourceError, 50, False, False),
    (errors.ServerSelectionTimeoutError("no servers"), ResourceError, None, True, True),
    (errors.NetworkTimeout("timed out"), ResourceError, None, False, True),
    (errors.AutoReconnect("connection closed"), ResourceError, None, False, True),
    (errors.InvalidOperation("cannot"), ResourceError, None, False, True),
    (errors.InvalidName("bad name"), ResourceInputParameterError, None, True, False),
    (bson.errors.InvalidDocument("cannot encode object"), ResourceInputParameterError, None, True, False),
    (TypeError("document must be an instance of dict"), ResourceInputParameterError, None, True, False),
])
def test_driver_errors_are_translated_once(raised: Exception, kind: type[ResourceError], code: int | None,
                                           recoverable: bool, terminal: bool) -> None:
    """The boundary, with the errors nx-27017 never produces (its commands fail without codes)."""
    error = _translate(raised, "m/1", "find on c")
    assert type(error) is kind and (error.code, error.recoverable, error.terminal) == (code, recoverable, terminal)
    assert "find on c: " in str(error) and type(raised).__name__ in str(error)
    assert ("request deadline" in str(error)) == getattr(raised, "timeout", False), "pymongo's timeouts say so"
    assert _translate(error, "m/1", "again") is error


def test_config_errors(mongo_peer: MongoPeer) -> None:
    good = {"server_address": mongo_peer.address, "database": DATABASE}
    with pytest.raises(ConfigError, match="unknown config keys: host, timeout"):
        Resource("m/1", {**good, "timeout": 1, "host": "x"})
    with pytest.raises(ConfigError, match="database"):
        Resource("m/1", {"server_address": mongo_peer.address})
    with pytest.raises(ConfigError, match="uri replaces"):
        Resource("m/1", {**good, "uri": mongo_peer.uri})
    with pytest.raises(ConfigError, match="server_address"):
        Resource("m/1", {"database": DATABASE, "server_address": "127.0.0.1:27017"})
    with pytest.raises(ConfigError, match="go together"):
        Resource("m/1", {**good, "username": "u"})
    with pytest.raises(ConfigError, match="transactions"):
        Resource("m/1", {**good, "transactions": "yes"})
    with pytest.raises(ConfigError, match="uri"):
        Resource("m/1", {"uri": "http://127.0.0.1/", "database": DATABASE})
    resource = Resource("m/1", {"uri": f"mongodb://u:p%40ss@127.0.0.1:{mongo_peer.port}/fromuri"})
    assert "fromuri" in repr(resource) and "p%40ss" not in repr(resource)


# --- deadlines ------------------------------------------------------------------------------------------


def test_closed_port_fails_within_the_deadline(cage: InProcessCage, attach: Callable[[float], Request]) -> None:
    """Nothing listens: the connect fails at connect_timeout (0.5 s), recoverable, long before the
    request's 3 s (and pymongo's default 30 s)."""
    attach(3.0)
    error, took = fails(lambda: one(cage).dead.things.find())
    assert error.recoverable and error.terminal and "cannot connect" in str(error)
    assert 0.45 <= took < 0.5 + STEP + MARGIN, took
    assert "connections=0/" in repr(pool(cage, "dead"))


def test_closed_port_with_little_time_left(cage: InProcessCage, attach: Callable[[float], Request]) -> None:
    """0.3 s left: the connect gives up at the request's deadline, rounded up to pymongo's 0.5 s step."""
    attach(0.3)
    _, took = fails(lambda: one(cage).dead.things.find(), (ResourceError, TransactionExecutionError))
    assert took < 0.3 + MARGIN, took


def test_suspended_server_costs_the_call_its_deadline(cage: InProcessCage, private_peer: MongoPeer,
                                                      attach: Callable[[float], Request]) -> None:
    """A server that accepts and never answers (SIGSTOP): the call fails at its 0.3 s, not 30 s."""
    add_resource(cage, "hung", resource_config(private_peer.address, pool__max_time=CAP))
    attach(3.0)
    assert one(cage).hung.things.insert_one({"a": 1})
    private_peer.suspend()
    try:
        error, took = fails(lambda: one(cage).hung.things.find())
    finally:
        private_peer.resume()
    assert CAP - 0.05 <= took < CAP + MARGIN, took
    assert "request deadline" in str(error) and error.terminal and not error.recoverable
    assert one(cage).hung.things.count_documents({}) == 1, "a new connection, once the server answers again"
    assert "connections=1/" in repr(pool(cage, "hung")), "the timed-out connection was discarded"


def test_killed_server_fails_the_call_within_a_step_of_its_deadline(
        cage: InProcessCage, private_peer: MongoPeer, attach: Callable[[float], Request]) -> None:
    """A pooled connection to a server that has gone: at most 0.3 s + pymongo's 0.5 s step. The
    reconnect that follows is bounded by connect_timeout: pool__max_time caps the call, not the
    connect that comes before it."""
    add_resource(cage, "gone", resource_config(private_peer.address, pool__max_time=CAP, connect_timeout=CAP))
    attach(3.0)
    assert one(cage).gone.things.insert_one({"a": 1})
    private_peer.stop()
    attach(3.0)  # stopping nx took some of the first request's time
    error, took = fails(lambda: one(cage).gone.things.find())
    assert took < CAP + STEP + MARGIN, took
    assert error.terminal
    error, took = fails(lambda: one(cage).gone.things.insert_one({"b": 2}))
    assert error.recoverable and error.terminal and took < CAP + STEP + MARGIN, (error, took)


class _Commands(monitoring.CommandListener):
    """Records the commands of the clients created while it is on (pymongo cannot unregister)."""

    def __init__(self) -> None:
        self.on = False
        self.seen: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on:
            self.seen.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_every_command_carries_max_time_ms_from_the_deadline(mongo_peer: MongoPeer, coll: str,
                                                             attach: Callable[[float], Request]) -> None:
    listener = _Commands()
    monitoring.register(listener)  # for clients made from now on: the one connect() makes
    resource = Resource("m/1", {"server_address": mongo_peer.address, "database": DATABASE})
    attach(2.0)
    resource.connect()
    try:
        resource.begin_transaction("XA", source_module_name="test", transaction_options={}, resource_args=(),
                                   resource_kwargs={})
        c = getattr(resource, coll)
        listener.on = True
        c.insert_one({"a": 1})
        c.find({"a": 1})
        c.update_one({"a": 1}, {"$set": {"b": 2}})
        c.count_documents({})
        c.aggregate([{"$match": {}}])
        c.delete_many({})
        resource.command("ping")
        listener.on = False
    finally:
        resource.disconnect()
    names = [next(iter(command)) for command in listener.seen]
    assert names == ["insert", "find", "update", "aggregate", "aggregate", "delete", "ping"], names
    for command in listener.seen:
        assert 0 < command["maxTimeMS"] <= 2000, command


def test_no_time_left_sends_nothing(mongo_peer: MongoPeer, attach: Callable[[float], Request]) -> None:
    resource = Resource("m/1", {"server_address": mongo_peer.address, "database": DATABASE})
    attach(2.0)
    resource.connect()
    try:
        attach(0.0)
        error, took = fails(lambda: resource.things.find())
        assert error.recoverable and not error.terminal and "request deadline" in str(error) and took < 0.05
        error, _ = fails(resource.connect)
        assert error.recoverable and "no time left" in str(error)
    finally:
        resource.disconnect()


# --- the pool ---------------------------------------------------------------------------------------------


def test_calls_reuse_one_connection(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    """Counted on both sides: the pool made one connection, and the server's count of open
    connections (the client's monitor and its one socket) does not move between calls."""
    attach(5.0)
    before = one(cage).reuse.command("serverStatus")["connections"]["current"]
    for n in range(5):
        getattr(one(cage).reuse, coll).insert_one({"n": n})
    assert getattr(one(cage).reuse, coll).count_documents({}) == 5
    assert one(cage).reuse.command("serverStatus")["connections"]["current"] == before
    assert "connections=1/" in repr(pool(cage, "reuse"))
    (connection,) = pool(cage, "reuse")._free
    assert connection.name == "reuse/1"


# --- transactions -----------------------------------------------------------------------------------------


def _refuse_after(peek_into: Callable[[], Any], seen: list[Any]) -> Callable[[Any, list[Any]], Any]:
    """An accept that, once every result is in, looks from outside and decides to roll back."""
    def accept(transaction: Any, results: list[Any]) -> Any:
        if transaction.NoValue in results:
            return None
        seen.append(peek_into())
        raise RuntimeError("rolled back on purpose")
    return accept


def test_auto_on_a_standalone_server_is_a_last_resource(cage: InProcessCage, coll: str, peek: Any,
                                                        attach: Callable[[float], Request]) -> None:
    """nx-27017 is standalone: the write is done when the call runs, and a rollback cannot undo it."""
    attach(5.0)
    assert Resource.transactional and not Resource.preparable
    seen: list[Any] = []
    t = xa(cage, accept=_refuse_after(lambda: peek[coll].count_documents({}), seen))
    getattr(t.mongo, coll).insert_one({"a": 1})
    with pytest.raises(RuntimeError, match="on purpose"):
        t.execute()
    settled(cage, "mongo")
    assert seen == [1] and peek[coll].count_documents({}) == 1, "still there after the rollback"
    connection = pool(cage, "mongo")._free[-1]
    assert connection.last_resource and "last-resource" in repr(connection)


# Each transaction below has one participant on `mongotx` that talks to the server: two would be
# two concurrent transactions, which nx-27017 cannot keep apart.


def test_forced_transactions_commit_on_nx(cage: InProcessCage, coll: str, peek: Any,
                                          attach: Callable[[float], Request]) -> None:
    attach(5.0)
    t = xa(cage)
    getattr(t.mongotx, coll).insert_many([{"a": 1}, {"a": 2}])
    t.mongo.command("ping")  # a last-resource participant beside it
    assert len(t.execute()[0]) == 2
    assert sorted(d["a"] for d in peek[coll].find()) == [1, 2]
    connection = pool(cage, "mongotx")._free[-1]
    assert not connection.last_resource and "transactional" in repr(connection)


def test_forced_transactions_abort_on_nx_but_are_not_isolated(cage: InProcessCage, coll: str, peek: Any,
                                                              attach: Callable[[float], Request]) -> None:
    """The rollback aborts the insert, which proves the transaction is real - but while it was
    open another client saw it: nx-27017 does no isolation (MongoDB would show 0 there)."""
    attach(5.0)
    getattr(one(cage).mongotx, coll).insert_one({"committed": True})
    seen: list[Any] = []
    t = xa(cage, accept=_refuse_after(lambda: peek[coll].count_documents({}), seen))
    getattr(t.mongotx, coll).insert_one({"committed": False})
    with pytest.raises(RuntimeError, match="on purpose"):
        t.execute()
    settled(cage, "mongotx")
    t = xa(cage, accept=_refuse_after(lambda: peek[coll].count_documents({"touched": True}), seen))
    getattr(t.mongotx, coll).update_many({}, {"$set": {"touched": True}})
    with pytest.raises(RuntimeError, match="on purpose"):
        t.execute()
    settled(cage, "mongotx")
    assert seen == [2, 1], "uncommitted writes were visible outside the transaction (dirty reads)"
    assert list(peek[coll].find({}, {"_id": 0})) == [{"committed": True}], "the insert and the update were aborted"


def test_a_failed_participant_aborts_the_others(cage: InProcessCage, coll: str, peek: Any,
                                                attach: Callable[[float], Request]) -> None:
    """The failing participant sends nothing, so only one transaction is open on nx at a time."""
    attach(5.0)
    t = xa(cage)
    getattr(t.mongotx, coll).insert_one({"a": 1})
    getattr(t.mongotx, coll).insert_one("not a document")
    with pytest.raises(ResourceInputParameterError) as info:
        t.execute()
    assert info.value.participant_index == 1
    settled(cage, "mongotx")
    assert list(peek[coll].find()) == []  # (nx's count fails on a collection that does not exist)


def test_transactions_auto_detection() -> None:
    """What `transactions="auto"` decides from the server's hello (no real replica set here)."""
    resource = Resource("m/1", {"server_address": ("127.0.0.1", 1), "database": DATABASE})
    sessions = {"logicalSessionTimeoutMinutes": 30}
    assert resource._uses_transactions({**sessions, "setName": "rs0"}), "a replica set member"
    assert resource._uses_transactions({**sessions, "msg": "isdbgrid"}), "mongos"
    assert not resource._uses_transactions(sessions), "a standalone server (nx-27017 says this)"
    assert not resource._uses_transactions({"setName": "rs0"}), "no logical sessions"
    forced = Resource("m/1", {"server_address": ("127.0.0.1", 1), "database": DATABASE, "transactions": True})
    assert forced._uses_transactions({})
