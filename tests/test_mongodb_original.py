"""The original's (Pythomnic3k's) MongoDB resource API, beside the modern one, against nx-27017.

A cage configured the original way (its config_resource_mongodb_1.py as the
original shipped it: keys, self_test_config, the get/copy tail) calls
`xa.mongodb_1.<coll>.insert / find / get_more / remove / drop`,
`xa.mongodb_1.kill_cursors` and `xa.mongodb_1.command` as the original's
cages did, through `pmnc.transaction` with a finite request attached, and
through a cage module of its own written the original way. Each test works
in its own collection.

What nx-27017 cannot show: it has no mapReduce (it answers {"ok": 1} to any
command it does not know, which is why map_reduce is refused rather than
sent), no server error for a cursor it does not know, no capped collections
(so no tailable cursors), and no per-session cursor check.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from conftest import InProcessCage, config_source, make_tree, module_source, wait_until
from mongo_peer import MongoPeer
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError
from pmnc.protocols.mongodb import Batch, Resource
from pmnc.request import Request

DATABASE = "pmnc_orig"

# The original's sample config file, in its own layout, pointed at the test server.
ORIGINAL_CONFIG = """\
# configuration file for resource "mongodb_1", as the original's cages have it

config = dict \\
(
protocol = "mongodb",                       # meta
server_address = ("127.0.0.1", {port}),     # mongodb
connect_timeout = 3.0,                      # mongodb
database = "{database}",                    # mongodb
username = None,                            # mongodb, optional str
password = None,                            # mongodb, optional str
pool__max_age = {max_age},
)

self_test_config = dict \\
(
database = "self_test_db",
)

# DO NOT TOUCH BELOW THIS LINE

__all__ = [ "get", "copy" ]

try: self_test_config
except NameError: self_test_config = {{}}

get = lambda key, default = None: pmnc.config.get_(config, self_test_config, key, default)
copy = lambda: pmnc.config.copy_(config, self_test_config)

# EOF
"""

# A cage module written the original way: pages through a collection with a cursor,
# one transaction per page, as the original's protocol_mongodb.py documents it.
PAGER = module_source("""
    def read_all(collection, page):
        docs = []
        xa = pmnc.transaction.create()
        getattr(xa.mongodb_1, collection).find(docs_to_return = page)
        rs = xa.execute()[0]
        docs.extend(rs.documents)
        while rs.cursor_id:
            xa = pmnc.transaction.create()
            getattr(xa.mongodb_1, collection).get_more(rs.cursor_id, docs_to_return = page)
            rs = xa.execute()[0]
            docs.extend(rs.documents)
        return [ d["k"] for d in docs ]
""", exports=["read_all"])


@pytest.fixture(scope="module")
def cage(mongo_peer: MongoPeer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessCage]:
    """`mongodb_1`: the original's config; every call gets a new pooled connection
    (pool__max_age tiny), so a cursor has to outlive the connection that opened it."""
    files = {"config_resource_mongodb_1.py": ORIGINAL_CONFIG.format(port=mongo_peer.port, database=DATABASE,
                                                                   max_age=0.001),
             "pager.py": PAGER}
    running = InProcessCage(make_tree(tmp_path_factory.mktemp("mongo-orig"), files=files)).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def peek(mongo_peer: MongoPeer) -> Iterator[pymongo.database.Database[dict[str, Any]]]:
    """The test database seen by a plain pymongo client: the outside view."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_peer.uri, serverSelectionTimeoutMS=5000)
    try:
        yield client[DATABASE]
    finally:
        client.close()


@pytest.fixture
def coll(request: pytest.FixtureRequest) -> str:
    return "o_" + re.sub(r"\W", "_", request.node.name)[:40] + "_" + uuid.uuid4().hex[:6]


def one(cage: InProcessCage) -> Any:
    """`pmnc.transaction`, whose `.mongodb_1.<coll>.<op>(...)` is a one-call transaction."""
    return cage.cage.runtime.root.transaction


def xa(cage: InProcessCage) -> Any:
    return cage.cage.runtime.root.transaction.create()


def populated(cage: InProcessCage, coll: str, n: int = 100) -> Any:
    c = getattr(one(cage).mongodb_1, coll)
    assert c.insert([{"k": k} for k in range(n)]) is None, "the original's insert returns nothing"
    return c


# --- find, cursors, get_more ---------------------------------------------------------------------------


def test_find_defaults_to_one_document_and_a_closed_cursor(cage: InProcessCage, coll: str,
                                                           attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = populated(cage, coll)
    rs = c.find(docs_to_return=None)
    assert isinstance(rs, Batch) and len(rs.documents) == 1 and rs.cursor_id == 0
    rs = c.find({"k": {"$gte": 10}}, docs_to_return=1)
    assert len(rs.documents) == 1 and rs.cursor_id == 0, "1 is -1, as the server read it"
    rs = c.find(query={"k": {"$gt": 90}}, docs_to_return=-100)
    assert sorted(d["k"] for d in rs.documents) == list(range(91, 100)) and rs.cursor_id == 0


def test_a_cursor_is_read_on_in_later_transactions(cage: InProcessCage, coll: str,
                                                   attach: Callable[[float], Request]) -> None:
    """The original's own self-test: 50, then two get_mores of 25 in one later transaction,
    each call on a pooled connection the previous call did not have."""
    attach(10.0)
    c = populated(cage, coll)
    rs = c.find(docs_to_return=50)
    assert len(rs.documents) == 50 and rs.cursor_id != 0
    t = xa(cage)
    getattr(t.mongodb_1, coll).get_more(rs.cursor_id, docs_to_return=25)
    getattr(t.mongodb_1, coll).get_more(rs.cursor_id, docs_to_return=25)
    rs1, rs2 = t.execute()
    assert len(rs1.documents) == 25 and len(rs2.documents) == 25
    assert sorted(d["k"] for d in rs.documents + rs1.documents + rs2.documents) == list(range(100))
    assert {rs1.starting_from, rs2.starting_from} == {50, 75}
    assert 0 in (rs1.cursor_id, rs2.cursor_id), "read to the end, the cursor is closed"
    with pytest.raises(ResourceError) as info:
        c.get_more(rs.cursor_id, docs_to_return=10)
    assert str(info.value) == "cursor not found", "the original's words, matched whole by its self-tests"


def test_a_cage_module_pages_through_a_collection_the_original_way(cage: InProcessCage, coll: str,
                                                                   attach: Callable[[float], Request]) -> None:
    attach(10.0)
    populated(cage, coll, 23)
    assert cage.cage.runtime.root.pager.read_all(coll, 5) == list(range(23))


def test_kill_cursors(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = populated(cage, coll, 10)
    rs = c.find(docs_to_return=2)
    assert len(rs.documents) == 2 and rs.cursor_id != 0
    assert one(cage).mongodb_1.kill_cursors([rs.cursor_id]) is None
    with pytest.raises(ResourceError, match=r"^cursor not found$"):
        c.get_more(rs.cursor_id)
    one(cage).mongodb_1.kill_cursors([rs.cursor_id, 12345])  # ids not open are let be, as the server did
    with pytest.raises(ResourceInputParameterError, match="list of cursor ids"):
        one(cage).mongodb_1.kill_cursors(rs.cursor_id)


def test_no_connection_is_left_behind_by_cursors(cage: InProcessCage, coll: str, peek: Any,
                                                 attach: Callable[[float], Request]) -> None:
    """The client that keeps cursors goes when none is open: the server's count of connections
    comes back once a cursor is read to the end, and once one is killed."""
    attach(10.0)
    c = populated(cage, coll, 10)

    def connections() -> int:
        return int(peek.command("serverStatus")["connections"]["current"])

    def settled_count() -> int:  # the pool's connection of the last call is closed by its next lease
        one(cage).mongodb_1.command("ping")
        return connections()

    before = settled_count()
    rs = c.find(docs_to_return=4)
    while rs.cursor_id:
        rs = c.get_more(rs.cursor_id, docs_to_return=4)
    wait_until(lambda: settled_count() <= before, 5.0, message="the cursor client closed")
    rs = c.find(docs_to_return=4)
    one(cage).mongodb_1.kill_cursors([rs.cursor_id])
    wait_until(lambda: settled_count() <= before, 5.0, message="the cursor client closed")


def test_fields_skip_modifiers_and_exhaust(cage: InProcessCage, coll: str,
                                           attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = getattr(one(cage).mongodb_1, coll)
    c.insert([{"k": k, "pad": "x"} for k in range(30)])
    rs = c.find({}, ("k",), docs_to_skip=25, docs_to_return=-10)
    assert [sorted(d) for d in rs.documents] == [["_id", "k"]] * 5, "fields as the original gave them"
    rs = c.find({"$query": {"k": {"$lt": 5}}, "$orderby": {"k": -1}}, fields={"_id": 0, "k": 1}, docs_to_return=-3)
    assert rs.documents == [{"k": 4}, {"k": 3}, {"k": 2}]
    rs = c.find(docs_to_return=7, exhaust=True)
    assert len(rs.documents) == 30 and rs.cursor_id == 0, "exhaust reads every match at once"
    rs = c.find(docs_to_return=0)
    assert len(rs.documents) == 30 and rs.cursor_id == 0, "0: the server's first batch, all of 30 here"
    with pytest.raises(ResourceInputParameterError, match=r"modifier '\$explain'"):
        c.find({"$query": {}, "$explain": True}, docs_to_return=5)


def test_a_cursor_call_keeps_the_deadline(cage: InProcessCage, coll: str, tmp_path: Path,
                                          attach: Callable[[float], Request]) -> None:
    """A get_more to a server that stopped answering fails at its deadline (pool__max_time cuts it
    short of the request's), and the resource works again once the server answers. (The batch in
    flight is lost; nx also drops the cursor with the socket pymongo closed, MongoDB keeps it.)"""
    peer = MongoPeer(tmp_path / "nx").start()
    try:
        config = {"protocol": "mongodb", "server_address": peer.address, "database": DATABASE,
                  "pool__max_time": 0.3}
        (cage.cage_dir / "config_resource_mongodb_2.py").write_text(config_source(config))
        attach(5.0)
        c = getattr(one(cage).mongodb_2, coll)
        c.insert([{"k": k} for k in range(5)])
        rs = c.find(docs_to_return=2)
        peer.suspend()
        with pytest.raises(ResourceError, match="request deadline"):
            c.get_more(rs.cursor_id, docs_to_return=2)
        peer.resume()
        one(cage).mongodb_2.kill_cursors([rs.cursor_id])
        assert len(c.find(docs_to_return=-5).documents) == 5
    finally:
        peer.stop()


# --- which API: decided by the call's arguments -----------------------------------------------------------


def test_a_find_without_the_originals_keywords_is_the_modern_one(cage: InProcessCage, coll: str,
                                                                  attach: Callable[[float], Request]) -> None:
    """Both kinds of caller get what they expect from the same call: modern code a list of every
    match, original code what its find(query) returned (one document, a closed cursor)."""
    attach(5.0)
    c = populated(cage, coll, 10)
    found = c.find({"k": {"$gte": 5}})
    assert sorted(d["k"] for d in found) == [5, 6, 7, 8, 9]
    assert len(found.documents) == 1 and found.documents[0]["k"] >= 5 and found.cursor_id == 0
    wrapped = c.find({"$query": {"k": {"$gte": 5}}, "$orderby": {"k": 1}})
    assert [d["k"] for d in wrapped] == [5, 6, 7, 8, 9] and wrapped.documents[0]["k"] == 5
    with pytest.raises(ResourceInputParameterError, match="not both"):
        c.find({}, docs_to_return=5, limit=2)
    with pytest.raises(ResourceInputParameterError, match="no argument 'docs_to_retrun'"):
        c.find({}, docs_to_retrun=5)
    with pytest.raises(ResourceInputParameterError, match="once"):
        c.find({}, query={})


def test_command_the_original_way(cage: InProcessCage, coll: str, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    populated(cage, coll, 10)
    m = one(cage).mongodb_1
    assert m.command("ping").documents[0]["ok"] == 1
    assert m.command("hello", hello=1.0).documents[0]["isWritablePrimary"] is True, "{name: kwargs[name]}"
    rs = m.command("distinct", {"key": "k", "query": {"k": {"$lt": 3}}}, distinct=coll)
    assert sorted(rs.documents[0]["values"]) == [0, 1, 2] and rs.cursor_id == 0
    assert m.command("count", {"query": {"k": {"$gt": 6}}}, count=coll, docs_to_return=-1)["n"] == 3, \
        "the reply is a dict too; the original's query options are no command fields"
    assert type(m.command({"count": coll})) is dict, "pymongo's own form keeps its plain dict"


# --- writes -------------------------------------------------------------------------------------------------


def test_remove_and_drop(cage: InProcessCage, coll: str, peek: Any, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = getattr(one(cage).mongodb_1, coll)
    c.insert([{"k": k % 3} for k in range(9)])
    assert c.remove({"k": 0}, single_remove=True) is None
    assert peek[coll].count_documents({"k": 0}) == 2
    c.remove({"k": 0})
    assert peek[coll].count_documents({}) == 6
    c.remove()
    assert peek[coll].count_documents({}) == 0, "remove() empties the collection, as the original's did"
    c.insert([])  # nothing to do
    c.insert([{"k": 1}])
    assert c.drop().documents[0]["ok"] == 1
    assert coll not in peek.list_collection_names()


def test_original_calls_in_one_transaction(cage: InProcessCage, coll: str, peek: Any,
                                           attach: Callable[[float], Request]) -> None:
    """Several of the original's calls in one transaction, the collection also named in the
    resource's arguments (how a collection named like an operation is reached)."""
    attach(5.0)
    t = xa(cage)
    getattr(t.mongodb_1, coll).insert([{"k": 1}])
    t.mongodb_1(collection=coll).insert([{"k": 2}])
    t.mongodb_1(coll).remove({"k": 3})
    assert t.execute() == (None, None, None)
    assert sorted(d["k"] for d in peek[coll].find()) == [1, 2]


# --- refused, with what to write now ------------------------------------------------------------------------


def test_map_reduce_and_bad_arguments_are_refused(cage: InProcessCage, coll: str,
                                                  attach: Callable[[float], Request]) -> None:
    attach(5.0)
    c = getattr(one(cage).mongodb_1, coll)
    with pytest.raises(ResourceInputParameterError, match=r"map_reduce is not supported .*aggregate\(\["):
        c.map_reduce({"map": "function () { emit(this.k, 1); }", "reduce": "function (k, vs) { return 1; }"})
    with pytest.raises(ResourceInputParameterError, match="insert takes a list of documents"):
        c.insert({"k": 1})
    with pytest.raises(ResourceInputParameterError, match="docs_to_return must be an int"):
        c.find({}, docs_to_return="10")
    with pytest.raises(ResourceInputParameterError, match="cursor id"):
        c.get_more("1")


def test_auth_database(mongo_peer: MongoPeer) -> None:
    """The original authenticated against `database`; pmnc against "admin" unless auth_database says."""
    good = {"server_address": mongo_peer.address, "database": DATABASE}
    Resource("m/1", {**good, "username": "u", "password": "p", "auth_database": DATABASE})
    with pytest.raises(ConfigError, match="auth_database is where username is defined"):
        Resource("m/1", {**good, "auth_database": DATABASE})
    with pytest.raises(ConfigError, match="uri replaces"):
        Resource("m/1", {"uri": mongo_peer.uri, "database": DATABASE, "auth_database": "x"})
