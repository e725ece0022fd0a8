"""The MongoDB resource: `xa.<name>.<collection>.find(...)` and friends, and `xa.<name>.command(...)`, via pymongo.

    xa = pmnc.transaction.create()
    xa.mongo.orders.insert_one({"item": "tea", "qty": 2})        # -> the inserted _id
    xa.mongo.orders.find({"qty": {"$gt": 1}}, sort=[("qty", -1)])  # -> [dict, ...]
    xa.mongo(collection="config").count_documents({})            # a collection named like an attribute
    xa.mongo.command("ping")                                      # -> {"ok": 1.0}

Operations on `xa.<name>.<collection>` (`xa.<name>.a.b` is collection "a.b"):

    insert_one(document)                         -> the inserted _id
    insert_many(documents, ordered=True)         -> [_id, ...]
    find(filter=None, projection=None, sort=None, skip=0, limit=0)
                                                 -> [dict, ...], the whole cursor, read within the deadline
    find_one(filter=None, projection=None, sort=None) -> dict or None
    update_one / update_many(filter, update, upsert=False)
                                                 -> {"matched": n, "modified": n, "upserted_id": _id or None}
    delete_one / delete_many(filter)             -> the number deleted
    aggregate(pipeline)                          -> [dict, ...]
    count_documents(filter=None)                 -> int

The original's (Pythomnic3k's) API works beside these, as its cages call it:

    insert(documents)                            -> None; a list of dicts
    find(query, fields, docs_to_skip=0, docs_to_return=None, tailable_cursor=False, slave_ok=False,
         no_cursor_timeout=False, await_data=False, exhaust=False)
                                                 -> Batch: .documents, .cursor_id (0: closed)
    get_more(cursor_id, docs_to_return=None)     -> Batch (docs_to_return None: one document)
    remove(selector={}, single_remove=False)     -> None; remove() empties the collection
    drop()                                       -> Reply
    xa.<name>.kill_cursors([cursor_id, ...])     -> None
    xa.<name>.command(name, params, **kwargs)    -> Reply: the reply dict, also as .documents[0]
    map_reduce(...)                              refused: write it as aggregate([...])

`find` is a name of both; its arguments decide, never the result's use. Any
keyword only the original had (query, fields, docs_to_skip, docs_to_return,
the flags) makes it the original's find with the original's defaults:
docs_to_return None returns one document and closes the cursor, -n returns
n and closes it, n > 1 returns n and leaves it open while more match, 0 the
server's first batch (1 is -1, as the server read it); exhaust=True reads
every match at once. Without them it is the modern find: the list of every
match, which also has what the original returned for that call (its
`.documents` is the first match, its `.cursor_id` 0). A query wrapped as
the original wrote it ({"$query": ..., "$orderby": ..., "$hint": ...}) is
unwrapped in both. `command` likewise: a dict second argument is the
original's `params`, merged into the command (`command("collStats",
{"scale": 1024}, collStats="c")`), anything else pymongo's value (write a
command whose value is a document whole: `command({"explain": {...}})`).
A command named by a str replies a dict that also has `.documents` ([the
reply]) and `.cursor_id` 0; one given whole as a dict, pymongo's only form,
replies a plain dict.

Cursors outlive the call and the transaction: `xa.m.c.get_more(batch.cursor_id, 10)`
in any later transaction of the cage reads on. A pooled connection cannot
keep them (the pool closes idle and old connections, which ends their
cursors, and a later call gets any connection; the server ties a cursor to
the session that opened it), so a find that may leave a cursor open, and
get_more and kill_cursors, run on a client the resource keeps for its
cursors, outside the pool and the transaction session, each cursor in a
session of its own. The client is closed when no cursor is left open; a
cursor unused for ten minutes (the server's own cursor timeout) is killed,
unless opened with no_cursor_timeout=True. An id not open here fails with
ResourceError "cursor not found", as the original's did. A get_more that
fails mid-way (its deadline, a broken connection) may have lost its batch,
as the original's did; the cursor stays open for kill_cursors.

A collection whose name is taken by the resource itself (the lifecycle names
of pmnc.resource.LIFECYCLE, the operations above, `collection`, `command`, `kill_cursors`,
`created`, `used`, `idle_timeout`, `max_age`, `expire`, `mark_used`,
`last_resource`, `preparable`, `inline`, names starting with "_") is named
in the resource's arguments instead: `xa.mongo(collection="config").find()`
or `xa.mongo("config").find()`. (A transaction registers its participant
when a call is made, so `xa.mongo.collection("config").find()` cannot chain;
`collection(name)` serves code that holds a connection itself.) The
original's operation names are taken on a collection too: `xa.mongo.a.drop()`
drops "a"; a collection "a.drop" is `xa.mongo("a.drop")`.

Data is plain Python both ways: documents are dicts, decimal.Decimal travels
as Decimal128 and comes back as Decimal, 64-bit integers come back as int,
datetimes are timezone-aware UTC, uuid.UUID is stored as a standard UUID.
`_id` values stay `bson.ObjectId`: they go back into filters as they are,
and `str(oid)` is the caller's choice. Documents passed in are not modified
(pymongo would add `_id` to them). Filters are data: no string is ever
evaluated here; `$where` is the server's business (MongoDB runs it unless
`security.javascriptEnabled` is off; nx-27017 refuses it).

Deadlines: every call runs under `pymongo.timeout(pmnc.request.remain)`, so
server selection, connection checkout, every socket read and write are
bounded, and each command carries `maxTimeMS` of the time left (pymongo
derives it from the same timeout, less the round trip). connect() waits
at most `connect_timeout`. One limit is pymongo's own: while no server is
reachable it re-checks every 0.5 s (MIN_HEARTBEAT_INTERVAL) and only then
looks at the clock, so a call or connect to a dead server fails up to half
a second after its deadline; a hung server's fails at the deadline.

Transactions: with `transactions="auto"` a connection runs the writes of a
participant in a session transaction when the server can (a replica set
member or mongos with logical sessions); the transaction's commit or
rollback then commits or aborts it. A standalone server cannot: then each
call takes effect when it runs and commit/rollback do nothing - the
resource is a *last resource* (`last_resource` is True on the connection):
put at most one such participant in a transaction, and do not rely on
rollback to undo it. `True` forces session transactions (a standalone
mongod refuses them, nx-27017 accepts them), `False` never uses them.
`command()` always runs outside the transaction (most commands may not run
in one). Never preparable: MongoDB has no prepared (two-phase) transactions
for a client to drive.

Each connection of the pool is one `MongoClient` with a single socket
(`maxPoolSize=1`) and its own monitor thread.
"""

from __future__ import annotations

import decimal
import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote_plus

import pymongo
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions, TypeCodec, TypeDecoder, TypeRegistry
from bson.decimal128 import Decimal128
from bson.errors import InvalidDocument, InvalidStringData
from bson.int64 import Int64
from pymongo.client_session import ClientSession
from pymongo.collection import Collection as _PymongoCollection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    ExecutionTimeout,
    InvalidName,
    InvalidURI,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.read_preferences import ReadPreference
from pymongo.uri_parser import parse_uri

from pmnc import log, resource
from pmnc import request as _request
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError, exc_string
from pmnc.schema import RESOURCE_KEYS, Key, resource_file

T = TypeVar("T")
Document = dict[str, Any]

OPERATIONS = frozenset({"insert_one", "insert_many", "find", "find_one", "update_one", "update_many", "delete_one",
                        "delete_many", "aggregate", "count_documents",
                        "insert", "get_more", "remove", "drop", "map_reduce"})  # the original's
# The keyword arguments of the original's queries (its OP_QUERY): in a find they make it the original's.
QUERY_OPTIONS = frozenset({"docs_to_skip", "docs_to_return", "tailable_cursor", "slave_ok", "no_cursor_timeout",
                           "await_data", "exhaust"})
ORIGINAL_FIND = QUERY_OPTIONS | {"query", "fields"}
# The original's query modifiers ({"$query": filter, "$orderby": ...}) as fields of the find command.
MODIFIERS = {"$query": "filter", "$orderby": "sort", "$hint": "hint", "$comment": "comment", "$min": "min",
             "$max": "max", "$returnKey": "returnKey", "$showDiskLoc": "showRecordId"}
CURSOR_IDLE = 600.0  # a cursor unused this long is killed: the server's own cursor timeout
# The keys of config_resource_<name>.py (a module constant: resource attributes are collections);
# resource_name, the "b" of a pool named mongo__b (pools.py), is accepted and nothing depends on it.
KEYS = RESOURCE_KEYS.extend(
    uri=Key(None),  # mongodb:// or mongodb+srv://, instead of server_address, username and password
    server_address=Key(None), username=Key(None), password=Key(None),
    database=Key(None),  # or the uri's path
    # where username is defined: None is "admin"; the original authenticated against `database`
    auth_database=Key(None),
    connect_timeout=Key(3.0, float),
    transactions=Key("auto"),  # "auto": if the server has them; True: required; False: never
)
NO_DEADLINE = 3600.0  # what an infinite request may wait, as the http resource
DISCONNECT_TIMEOUT = 1.0  # closing sends endSessions: never worth more than this


class _DecimalCodec(TypeCodec):
    python_type = decimal.Decimal
    bson_type = Decimal128

    def transform_python(self, value: Any) -> Decimal128:
        return Decimal128(value)

    def transform_bson(self, value: Any) -> decimal.Decimal:
        return value.to_decimal()  # type: ignore[no-any-return]


class _Int64Decoder(TypeDecoder):
    bson_type = Int64

    def transform_bson(self, value: Any) -> int:
        return int(value)


CODEC_OPTIONS: CodecOptions[Document] = CodecOptions(
    document_class=dict, tz_aware=True, uuid_representation=UuidRepresentation.STANDARD,
    type_registry=TypeRegistry([_DecimalCodec(), _Int64Decoder()]))


class Resource(resource.Resource):
    """One MongoClient (one socket) to a MongoDB server or cluster, on one database."""

    # The pool keeps a participant until the decision: its writes may be in a
    # session transaction. On a server without transactions commit and
    # rollback do nothing (see `last_resource`).
    transactional = True
    inline = False  # an inline call would never commit
    preparable = False  # no two-phase commit: MongoDB has no client-driven prepare
    # True: calls take effect as they run and rollback cannot undo them. Set
    # per connection by connect(), from what the server says it can do.
    last_resource = True

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        s = self.config = KEYS.read(config, resource_file(name))
        self._uri, self._database = _target(name, s)
        self._connect_timeout: float = s["connect_timeout"]
        if self._connect_timeout <= 0:
            raise ConfigError(f"resource {name}: connect_timeout must be positive")
        self._transactions = s["transactions"]
        if self._transactions not in ("auto", True, False):
            raise ConfigError(f"resource {name}: transactions must be \"auto\", True or False")
        self._client: pymongo.MongoClient[Document] | None = None
        self._db: Database[Document] | None = None
        self._session: ClientSession | None = None
        self._named: str | None = None  # the collection named in xa.<name>(collection=...) for this call

    # --- lifecycle -----------------------------------------------------------------------

    def connect(self) -> None:
        timeout = min(self._connect_timeout, _remain())
        if timeout <= 0:
            raise ResourceError(f"resource {self.name}: no time left to connect", recoverable=True)
        client = _new_client(self.name, self._uri, self._connect_timeout, 1)
        try:
            with pymongo.timeout(timeout):
                hello = client.admin.command("hello")
        except PyMongoError as e:
            _close(client)
            raise ResourceError(f"resource {self.name} cannot connect to {_hosts(self._uri)}: "
                                f"{exc_string(e, stack=False)}", recoverable=True) from None
        self._client, self._db = client, client.get_database(self._database, codec_options=CODEC_OPTIONS)
        self.last_resource = not self._uses_transactions(hello)
        log.debug(f"resource {self.name} has connected to {_hosts(self._uri)}, "
                  f"{'last resource' if self.last_resource else 'session transactions'}")

    def _uses_transactions(self, hello: Mapping[str, Any]) -> bool:
        if self._transactions != "auto":
            return bool(self._transactions)
        if hello.get("logicalSessionTimeoutMinutes") is None:
            return False
        return bool(hello.get("setName")) or hello.get("msg") == "isdbgrid" or "serviceId" in hello

    def disconnect(self) -> None:
        _sweep_cursors()  # the pool's periodic sweep passes here: cursors unused too long are killed
        client, session = self._client, self._session
        self._client = self._db = self._session = None
        if client is None:
            return
        if session is not None:
            try:
                with pymongo.timeout(_closing_time()):
                    session.end_session()  # aborts a transaction left open
            except PyMongoError:
                pass
        _close(client)

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        self._named = _named_collection(self.name, resource_args, resource_kwargs)
        if self.last_resource:
            return
        session = self._session
        if session is None:
            session = self._session = self._connected().start_session(causal_consistency=False)
        if session.in_transaction:  # left open by a call that never finished: not ours to keep
            self._quietly_abort(session)
        session.start_transaction()  # nothing is sent until the first operation

    def commit(self) -> None:
        session = self._session
        if session is not None and session.in_transaction:
            self._call("commit", lambda _session: session.commit_transaction(), in_transaction=False)

    def rollback(self) -> None:
        session = self._session
        if session is not None and session.in_transaction:
            self._quietly_abort(session)

    def _quietly_abort(self, session: ClientSession) -> None:
        """pymongo's abort ignores the server's errors; a dead server fails the next call instead."""
        with pymongo.timeout(max(_remain(), 0.001)):  # pymongo.timeout(0) would be no timeout
            session.abort_transaction()

    # --- calls ------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """`xa.<name>.<collection>` is a collection; `xa.<name>(collection=...).find` is that one's find."""
        if name.startswith("_"):
            raise AttributeError(name)
        if name in OPERATIONS:
            if self._named is None:
                return functools.partial(_no_collection, self.name, name)
            return getattr(self.collection(self._named), name)
        return self.collection(name)

    def collection(self, name: str) -> Collection:
        """The collection `name` of the configured database (any name, "a.b" included)."""
        return Collection(self, _collection_name(self.name, name))

    def command(self, command: str | Mapping[str, Any], value: Any = 1, **kwargs: Any) -> Document:
        """A database command outside the transaction: the reply, a dict. pymongo's `Database.command`
        (name, value, **fields), or the original's (name, params: dict, **fields) - see the module.
        Named by a str, the reply is a Reply (a dict with the original's `.documents`): original code
        names its commands so; a command given whole as a mapping is pymongo's only, its reply a dict."""
        if not isinstance(command, (str, Mapping)) or not command:
            raise ResourceInputParameterError(f"resource {self.name}: a command is a name or a non-empty mapping")
        named = isinstance(command, str)
        kwargs = {k: v for k, v in kwargs.items() if k not in QUERY_OPTIONS}  # the original's, not fields
        if isinstance(command, str) and isinstance(value, Mapping):
            command, value, kwargs = _original_command(command, value, kwargs), 1, {}
        db, spec = self._database_or_fail(), command if isinstance(command, str) else dict(command)
        reply = self._call(f"command {_command_name(command)}",
                           lambda _session: db.command(spec, value, codec_options=CODEC_OPTIONS, **kwargs),
                           in_transaction=False)
        return Reply(reply) if named else reply

    def kill_cursors(self, cursor_ids: Sequence[int]) -> None:
        """The original's: close cursors left open by find; an id not open here is let be, as the server did."""
        if not isinstance(cursor_ids, (list, tuple)) or not all(_is_int(c) for c in cursor_ids):
            raise ResourceInputParameterError(f"resource {self.name}: kill_cursors takes a list of cursor ids")
        if cursor_ids:
            self._cursors().kill(list(cursor_ids))

    def _cursors(self) -> _Cursors:
        return _cursors_of(self.name.partition("/")[0], self._uri, self._database, self._connect_timeout)

    # --- the boundary: deadline and error translation -------------------------------------

    def _call(self, doing: str, operation: Callable[[ClientSession | None], T], *, in_transaction: bool = True) -> T:
        """Run `operation(session)` within the request's deadline; pymongo's errors leave as ResourceError."""
        timeout = _remain()
        if timeout <= 0:
            raise ResourceError(f"resource {self.name}: request deadline before {doing}", recoverable=True,
                                terminal=False)
        session = self._session if in_transaction and not self.last_resource else None
        try:
            with pymongo.timeout(timeout):
                return operation(session)
        except Exception as e:
            raise _translate(e, self.name, doing) from e

    def _connected(self) -> pymongo.MongoClient[Document]:
        if self._client is None:
            raise ResourceError(f"resource {self.name} is not connected", recoverable=True)
        return self._client

    def _database_or_fail(self) -> Database[Document]:
        self._connected()
        assert self._db is not None
        return self._db

    def __repr__(self) -> str:
        mode = "last-resource" if self.last_resource else "transactional"
        return f"<{type(self).__name__} {self.name} {self._database} {mode} ttl={self.ttl:.1f}s>"


class Collection:
    """`xa.<resource>.<collection>`: its operations; `.<sub>` is the collection "<collection>.<sub>".
    Holds nothing public but the operations, so that `xa.mongo.a.name` is a collection too."""

    def __init__(self, owner: Resource, name: str) -> None:
        self._owner, self._name = owner, name

    def __getattr__(self, name: str) -> Collection:
        if name.startswith("_"):
            raise AttributeError(name)
        return Collection(self._owner, _collection_name(self._owner.name, f"{self._name}.{name}"))

    def _run(self, doing: str, operation: Callable[[_PymongoCollection[Document], ClientSession | None], T]) -> T:
        collection = self._owner._database_or_fail()[self._name]
        return self._owner._call(f"{doing} on {self._name}", lambda session: operation(collection, session))

    def _fail(self, description: str) -> ResourceInputParameterError:
        return ResourceInputParameterError(f"resource {self._owner.name}: {self._name}: {description}")

    def insert_one(self, document: Mapping[str, Any]) -> Any:
        """The document's `_id` (an ObjectId made by the driver unless it had one)."""
        document = dict(self._document(document, "document"))  # a copy: the caller's dict gets no _id
        return self._run("insert_one", lambda c, s: c.insert_one(document, session=s).inserted_id)

    def insert_many(self, documents: Sequence[Mapping[str, Any]], ordered: bool = True) -> list[Any]:
        if not isinstance(documents, (list, tuple)) or not documents:
            raise self._fail("insert_many takes a non-empty list of documents")
        copies = [dict(self._document(d, "document")) for d in documents]
        return self._run("insert_many",
                         lambda c, s: list(c.insert_many(copies, ordered=bool(ordered), session=s).inserted_ids))

    def find(self, filter: Mapping[str, Any] | None = None, projection: Mapping[str, Any] | Sequence[str] | None = None,
             sort: Sequence[tuple[str, int]] | Mapping[str, int] | None = None, skip: int = 0,
             limit: int = 0, **original: Any) -> Found | Batch:
        """Every matching document (all of the cursor, read within the deadline); `limit` 0 is no limit.
        With a keyword only the original had, the original's find (see the module)."""
        if original:
            if sort is not None or skip != 0 or limit != 0:
                raise self._fail("find takes the original's arguments (query, fields, docs_to_...) "
                                 "or sort/skip/limit, not both")
            return self._original_find(filter, projection, original)
        if isinstance(filter, Mapping) and "$query" in filter:  # the original's wrapped query: the command has it all
            if sort is not None or skip != 0 or limit != 0:
                raise self._fail("a wrapped query ({\"$query\": ...}) carries its own $orderby; "
                                 "give docs_to_skip / docs_to_return instead of skip / limit")
            return Found(self._original_find(filter, projection, {"exhaust": True, "docs_to_return": 0}).documents)
        return self._find_all(filter, projection, sort, skip, limit)

    def _find_all(self, filter: Any, projection: Any, sort: Any, skip: Any, limit: Any) -> Found:
        query, fields, order = self._filter(filter), self._projection(projection), self._sort(sort)
        skip, limit = self._count(skip, "skip"), self._count(limit, "limit")

        def read(c: _PymongoCollection[Document], s: ClientSession | None) -> Found:
            with c.find(query, fields, sort=order, skip=skip, limit=limit, session=s) as cursor:
                return Found(cursor)
        return self._run("find", read)

    def find_one(self, filter: Mapping[str, Any] | None = None,
                 projection: Mapping[str, Any] | Sequence[str] | None = None,
                 sort: Sequence[tuple[str, int]] | Mapping[str, int] | None = None) -> Document | None:
        found = self._find_all(filter, projection, sort, 0, 1)
        return found[0] if found else None

    def update_one(self, filter: Mapping[str, Any], update: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                   upsert: bool = False) -> dict[str, Any]:
        query, change = self._filter(filter, required=True), self._update(update)
        return self._run("update_one", lambda c, s: _updated(c.update_one(query, change, upsert=bool(upsert),
                                                                          session=s)))

    def update_many(self, filter: Mapping[str, Any], update: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                    upsert: bool = False) -> dict[str, Any]:
        query, change = self._filter(filter, required=True), self._update(update)
        return self._run("update_many", lambda c, s: _updated(c.update_many(query, change, upsert=bool(upsert),
                                                                            session=s)))

    def delete_one(self, filter: Mapping[str, Any]) -> int:
        query = self._filter(filter, required=True)
        return self._run("delete_one", lambda c, s: c.delete_one(query, session=s).deleted_count)

    def delete_many(self, filter: Mapping[str, Any]) -> int:
        """`delete_many({})` empties the collection: the filter is required so that it is said."""
        query = self._filter(filter, required=True)
        return self._run("delete_many", lambda c, s: c.delete_many(query, session=s).deleted_count)

    def aggregate(self, pipeline: Sequence[Mapping[str, Any]]) -> list[Document]:
        if not isinstance(pipeline, (list, tuple)) or not all(isinstance(s, Mapping) for s in pipeline):
            raise self._fail("aggregate takes a list of stages (dicts)")
        stages = list(pipeline)

        def read(c: _PymongoCollection[Document], s: ClientSession | None) -> list[Document]:
            with c.aggregate(stages, session=s) as cursor:
                return list(cursor)
        return self._run("aggregate", read)

    def count_documents(self, filter: Mapping[str, Any] | None = None) -> int:
        query = self._filter(filter)
        return self._run("count_documents", lambda c, s: c.count_documents(query, session=s))

    # --- the original's operations ---------------------------------------------------------------

    def insert(self, documents: Sequence[Mapping[str, Any]]) -> None:
        """The original's: a list of documents (none is nothing to do); the caller's dicts get no _id."""
        if not isinstance(documents, (list, tuple)):
            raise self._fail("insert takes a list of documents (insert_one takes one)")
        if documents:
            self.insert_many(documents)

    def remove(self, selector: Mapping[str, Any] | None = None, single_remove: bool = False) -> None:
        """The original's: every matching document, or the first one; remove() empties the collection."""
        query = self._filter(selector)
        if single_remove:
            self._run("remove", lambda c, s: c.delete_one(query, session=s))
        else:
            self._run("remove", lambda c, s: c.delete_many(query, session=s))

    def drop(self) -> Document:
        """The original's: the server's reply to "drop", run outside the transaction as every command."""
        return self._owner.command("drop", self._name)

    def command(self, command: str | Mapping[str, Any], value: Any = 1, **kwargs: Any) -> Document:
        """The original allowed a command on a collection; it goes to the database all the same."""
        return self._owner.command(command, value, **kwargs)

    def get_more(self, cursor_id: int, docs_to_return: int | None = None) -> Batch:
        """The original's: the next documents of a cursor a find left open, in this transaction or a later one."""
        if not _is_int(cursor_id):
            raise self._fail("get_more takes a cursor id (an int)")
        n = 1 if docs_to_return is None else self._docs_to_return(docs_to_return)
        return self._owner._cursors().more(int(cursor_id), self._name, abs(n))

    def map_reduce(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: MongoDB deprecated mapReduce in 5.0, and nothing here can run it to the original's end."""
        raise self._fail("map_reduce is not supported (MongoDB deprecated mapReduce in 5.0): write it as "
                         "an aggregation, aggregate([{\"$match\": query}, {\"$group\": {\"_id\": key, ...}}, "
                         "{\"$match\": having}]), which returns the list of documents")

    def _original_find(self, query: Any, fields: Any, options: dict[str, Any]) -> Batch:
        unknown = sorted(set(options) - ORIGINAL_FIND)
        if unknown:
            raise self._fail(f"find has no argument {unknown[0]!r}")
        if "query" in options:
            if query is not None:
                raise self._fail("find takes its query once: positionally or as query=")
            query = options.pop("query")
        if "fields" in options:
            if fields is not None:
                raise self._fail("find takes its fields once: positionally or as fields=")
            fields = options.pop("fields")
        spec, read_preference = self._find_command(query, fields, options)
        n = self._docs_to_return(options.get("docs_to_return"))
        if options.get("exhaust") or n < 0:
            documents = self._run("find", lambda c, s: _read_closed(c.database, s, spec, read_preference,
                                                                      bool(options.get("exhaust"))))
            return Batch(documents, 0)
        return self._owner._cursors().start(spec, read_preference, self._name)

    def _find_command(self, query: Any, fields: Any, options: dict[str, Any]) -> tuple[Document, Any]:
        """The find command for the original's arguments, and its read preference."""
        spec: Document = {"find": self._name, **self._modifiers(self._filter(query))}
        projection = self._projection(fields)
        if projection:
            spec["projection"] = projection if isinstance(projection, Mapping) else {f: 1 for f in projection}
        skip = self._count(options.get("docs_to_skip") or 0, "docs_to_skip")
        if skip:
            spec["skip"] = skip
        n = self._docs_to_return(options.get("docs_to_return"))
        if n < 0:
            spec["limit"] = -n
            if not options.get("exhaust"):
                spec["singleBatch"], spec["batchSize"] = True, -n
        elif n > 0:
            spec["batchSize"] = n
        for flag, field in (("tailable_cursor", "tailable"), ("await_data", "awaitData"),
                            ("no_cursor_timeout", "noCursorTimeout")):
            if options.get(flag):
                spec[field] = True
        return spec, ReadPreference.SECONDARY_PREFERRED if options.get("slave_ok") else None

    def _modifiers(self, query: Mapping[str, Any]) -> Document:
        """{"$query": f, "$orderby": o, ...} as find command fields; a plain query is the filter."""
        if "$query" not in query:
            return {"filter": dict(query)}
        unknown = sorted(k for k in query if k not in MODIFIERS)
        if unknown:
            raise self._fail(f"query modifier {unknown[0]!r} is not supported; "
                             f"these are: {', '.join(sorted(MODIFIERS))}")
        spec = {MODIFIERS[k]: v for k, v in query.items()}
        spec["filter"] = dict(self._filter(spec["filter"]))
        return spec

    def _docs_to_return(self, value: Any) -> int:
        """The original's count: None is -1 (one document, then close); 1 is -1 too, as the server read it."""
        if value is None:
            return -1
        if not _is_int(value):
            raise self._fail("docs_to_return must be an int")
        return -1 if value == 1 else int(value)

    # --- argument checks: wrong arguments never reach the server --------------------------------

    def _document(self, value: Any, what: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self._fail(f"{what} must be a dict, not {type(value).__name__}")
        return value

    def _filter(self, value: Any, required: bool = False) -> Mapping[str, Any]:
        if value is None and not required:
            return {}
        return self._document(value, "filter")

    def _projection(self, value: Any) -> Mapping[str, Any] | list[str] | None:
        if value is None or isinstance(value, Mapping):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(f, str) for f in value):
            return list(value)
        raise self._fail("projection must be a dict or a list of field names")

    def _sort(self, value: Any) -> list[tuple[str, Any]] | None:
        if value is None:
            return None
        pairs = list(value.items()) if isinstance(value, Mapping) else value
        if isinstance(pairs, (list, tuple)) and all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and _direction(p[1])
                for p in pairs):
            return [(k, d) for k, d in pairs]
        raise self._fail("sort must be [(field, 1 | -1), ...] or {field: 1 | -1}")

    def _count(self, value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._fail(f"{what} must be a non-negative int")
        return value

    def _update(self, value: Any) -> Mapping[str, Any] | list[Mapping[str, Any]]:
        if isinstance(value, Mapping) and value and all(isinstance(k, str) and k.startswith("$") for k in value):
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(s, Mapping) for s in value):
            return list(value)
        raise self._fail("update must be a dict of $-operators or a non-empty pipeline list "
                         "(replacing a whole document is not an update)")

    def __repr__(self) -> str:
        return f"<Collection {self._name} of {self._owner.name}>"


# --- the original's results and cursors -----------------------------------------------------------


class Batch:
    """What the original's find and get_more return: `.documents`, a list of dicts, and `.cursor_id`,
    the cursor to read on with get_more (0: closed); `.starting_from`, the first one's place in it."""

    __slots__ = ("cursor_id", "documents", "starting_from")

    def __init__(self, documents: list[Document], cursor_id: int, starting_from: int = 0) -> None:
        self.documents, self.cursor_id, self.starting_from = documents, cursor_id, starting_from

    def __repr__(self) -> str:
        return f"<Batch of {len(self.documents)} from {self.starting_from}, cursor {self.cursor_id}>"


class Found(list[Document]):
    """The modern find's list of every match; to original code, what its find(query) returned:
    `.documents` the first match (the original's default returned one), `.cursor_id` 0."""

    @property
    def documents(self) -> list[Document]:
        return self[:1]

    @property
    def cursor_id(self) -> int:
        return 0


class Reply(dict[str, Any]):
    """A command's reply, a dict; to original code, as its command returned it: `.documents[0]`."""

    @property
    def documents(self) -> list[Document]:
        return [dict(self)]

    @property
    def cursor_id(self) -> int:
        return 0


def _read_closed(db: Database[Document], session: ClientSession | None, spec: Document, read_preference: Any,
                 exhaust: bool) -> list[Document]:
    """A find that leaves no cursor: its first batch, or with `exhaust` every batch."""
    reply = db.command(spec, session=session, read_preference=read_preference, codec_options=CODEC_OPTIONS)
    documents, cursor_id = list(reply["cursor"]["firstBatch"]), int(reply["cursor"]["id"])
    while cursor_id and exhaust:
        reply = db.command({"getMore": Int64(cursor_id), "collection": spec["find"]}, session=session,
                           read_preference=read_preference, codec_options=CODEC_OPTIONS)
        documents.extend(reply["cursor"]["nextBatch"])
        cursor_id = int(reply["cursor"]["id"])
    if cursor_id:  # the server kept one the call said to close (singleBatch ignored)
        db.command({"killCursors": spec["find"], "cursors": [Int64(cursor_id)]}, session=session)
    return documents


class _OpenCursor:
    __slots__ = ("collection", "delivered", "in_use", "no_timeout", "session", "used")

    def __init__(self, session: ClientSession, collection: str, delivered: int, no_timeout: bool) -> None:
        self.session, self.collection, self.delivered, self.no_timeout = session, collection, delivered, no_timeout
        self.used = time.monotonic()
        self.in_use = threading.Lock()  # one get_more at a time: a session is not for two threads


class _Cursors:
    """The cursors the original's finds of one resource left open: a client of their own (the pool's
    connections come and go), a session per cursor (the server ties a cursor to its session)."""

    def __init__(self, name: str, uri: str, database: str, connect_timeout: float) -> None:
        self._name, self._uri, self._database, self._connect_timeout = name, uri, database, connect_timeout
        self._lock = threading.Lock()
        self._client: pymongo.MongoClient[Document] | None = None
        self._open: dict[int, _OpenCursor] = {}
        self._users = 0  # calls between _enter and _leave: the client is not closed under them

    def start(self, spec: Document, read_preference: Any, collection: str) -> Batch:
        db = self._enter()
        try:
            session = db.client.start_session(causal_consistency=False)
            try:
                reply = self._call(f"find on {collection}", lambda: db.command(
                    spec, session=session, read_preference=read_preference, codec_options=CODEC_OPTIONS))
            except BaseException:
                session.end_session()
                raise
            documents, cursor_id = list(reply["cursor"]["firstBatch"]), int(reply["cursor"]["id"])
            if cursor_id:
                with self._lock:
                    self._open[cursor_id] = _OpenCursor(session, collection, len(documents),
                                                        bool(spec.get("noCursorTimeout")))
            else:
                session.end_session()
            return Batch(documents, cursor_id)
        finally:
            self._leave()

    def more(self, cursor_id: int, collection: str, n: int) -> Batch:
        cursor = self._opened(cursor_id)
        if cursor.collection != collection:
            raise ResourceInputParameterError(f"resource {self._name}: cursor {cursor_id} is of collection "
                                              f"{cursor.collection}, not {collection}")
        # Calls on one cursor take turns, as the server took the original's (two get_mores of one
        # transaction run at once, on two connections).
        if not cursor.in_use.acquire(timeout=max(_remain(), 0.0)):
            raise ResourceError(f"resource {self._name}: request deadline waiting for cursor {cursor_id}, "
                                f"in use by another call", recoverable=True, terminal=False)
        try:
            return self._more(cursor_id, self._opened(cursor_id), n)  # read to the end meanwhile: not found
        finally:
            cursor.in_use.release()

    def _opened(self, cursor_id: int) -> _OpenCursor:
        with self._lock:
            cursor = self._open.get(cursor_id)
        if cursor is None:  # the original's words, which its self-tests match whole
            raise ResourceError("cursor not found", recoverable=False, terminal=False)
        return cursor

    def _more(self, cursor_id: int, cursor: _OpenCursor, n: int) -> Batch:
        collection = cursor.collection
        db = self._enter()
        try:
            command: Document = {"getMore": Int64(cursor_id), "collection": collection}
            if n:
                command["batchSize"] = n
            try:
                reply = self._call(f"get_more on {collection}", lambda: db.command(
                    command, session=cursor.session, codec_options=CODEC_OPTIONS))
            except ResourceError as e:
                self._done(cursor_id, cursor, forget=e.code == 43)  # 43: CursorNotFound, it is gone
                raise
            documents, next_id = list(reply["cursor"]["nextBatch"]), int(reply["cursor"]["id"])
            starting_from = cursor.delivered
            cursor.delivered += len(documents)
            self._done(cursor_id, cursor, forget=not next_id)
            return Batch(documents, next_id, starting_from)
        finally:
            self._leave()

    def kill(self, cursor_ids: list[int]) -> None:
        with self._lock:
            killed = [(i, c) for i, c in ((i, self._open.pop(i, None)) for i in cursor_ids) if c is not None]
        if not killed:
            return
        db, failure = self._enter(), None
        try:
            for cursor_id, cursor in killed:  # each of them, whatever happens to one
                try:
                    self._kill_one(db, cursor_id, cursor)
                except ResourceError as e:
                    failure = failure or e
        finally:
            self._leave()
        if failure is not None:
            raise failure

    def _kill_one(self, db: Database[Document], cursor_id: int, cursor: _OpenCursor) -> None:
        try:
            self._call("kill_cursors", lambda: db.command(
                {"killCursors": cursor.collection, "cursors": [Int64(cursor_id)]}, session=cursor.session))
        finally:
            cursor.session.end_session()

    def sweep(self) -> None:
        """Kill the cursors unused for CURSOR_IDLE (never waiting more than DISCONNECT_TIMEOUT each)."""
        now = time.monotonic()
        with self._lock:
            stale = [i for i, c in self._open.items()
                     if not c.in_use.locked() and not c.no_timeout and now - c.used > CURSOR_IDLE]
            if not stale and self._client is None:
                return
        try:
            with pymongo.timeout(_closing_time()):
                self.kill(stale)
        except (ResourceError, PyMongoError) as e:
            log.debug(f"resource {self._name}: killing unused cursors: {exc_string(e, stack=False)}")
        finally:
            self._close_if_idle()

    def _done(self, cursor_id: int, cursor: _OpenCursor, *, forget: bool) -> None:
        with self._lock:
            cursor.used = time.monotonic()
            if forget and self._open.get(cursor_id) is cursor:
                del self._open[cursor_id]
            else:
                forget = False
        if forget:
            cursor.session.end_session()

    def _enter(self) -> Database[Document]:
        with self._lock:
            if self._client is None:
                self._client = _new_client(self._name, self._uri, self._connect_timeout, CURSOR_SOCKETS)
            self._users += 1
            return self._client.get_database(self._database, codec_options=CODEC_OPTIONS)

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        """No cursor open and no call under way: the client goes (its monitor thread with it)."""
        with self._lock:
            client = self._client if self._users == 0 and not self._open else None
            if client is not None:
                self._client = None
        if client is not None:
            _close(client)

    def _call(self, doing: str, operation: Callable[[], T]) -> T:
        timeout = _remain()
        if timeout <= 0:
            raise ResourceError(f"resource {self._name}: request deadline before {doing}", recoverable=True,
                                terminal=False)
        try:
            with pymongo.timeout(timeout):
                return operation()
        except Exception as e:
            error = _translate(e, self._name, doing)
            error.terminal = False  # this client failed, not the pool's connection the call came with
            raise error from e


CURSOR_SOCKETS = 4  # concurrent cursor calls of one resource; more wait for a socket, within their deadline
_keepers: dict[tuple[str, str, str], _Cursors] = {}
_keepers_lock = threading.Lock()


def _cursors_of(name: str, uri: str, database: str, connect_timeout: float) -> _Cursors:
    """The keeper of the resource's cursors (one per resource, server and database: a reloaded config
    with another server gets another)."""
    with _keepers_lock:
        keeper = _keepers.get((name, uri, database))
        if keeper is None:
            keeper = _keepers[(name, uri, database)] = _Cursors(name, uri, database, connect_timeout)
        return keeper


def _sweep_cursors() -> None:
    with _keepers_lock:
        keepers = list(_keepers.values())
    for keeper in keepers:
        keeper.sweep()


def _original_command(name: str, params: Mapping[str, Any], kwargs: dict[str, Any]) -> Document:
    """The original's command(name, params, **kwargs): {name: kwargs[name] or 1, **params, **other kwargs}."""
    command: Document = {name: kwargs.pop(name, 1)}
    command.update(params)
    command.update(kwargs)
    return command


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _new_client(name: str, uri: str, connect_timeout: float, sockets: int) -> pymongo.MongoClient[Document]:
    ms = max(int(connect_timeout * 1000), 1)
    try:
        return pymongo.MongoClient(
            uri, maxPoolSize=sockets, minPoolSize=0, connectTimeoutMS=ms, serverSelectionTimeoutMS=ms,
            appname="pmnc", document_class=dict, tz_aware=True, uuidRepresentation="standard",
            type_registry=CODEC_OPTIONS.type_registry)
    except (ConfigurationError, InvalidURI, TypeError, ValueError) as e:
        raise ConfigError(f"resource {name}: {exc_string(e, stack=False)}") from None


# --- helpers -------------------------------------------------------------------------------------


def _target(name: str, config: Mapping[str, Any]) -> tuple[str, str]:
    """The URI to connect to and the database, from `uri` or `server_address`/`username`/`password`."""
    uri, address = config.get("uri"), config.get("server_address")
    username, password = config.get("username"), config.get("password")
    database, auth_database = config.get("database"), config.get("auth_database")
    if uri is not None:
        if address is not None or username is not None or password is not None or auth_database is not None:
            raise ConfigError(f"resource {name}: uri replaces server_address, username, password and "
                              f"auth_database (its ?authSource=): set those to None")
        if not isinstance(uri, str) or not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError(f"resource {name}: uri must be a mongodb:// or mongodb+srv:// URI")
        if uri.startswith("mongodb://"):  # +srv would need DNS to parse
            try:
                database = database or parse_uri(uri)["database"]
            except (InvalidURI, ConfigurationError, ValueError) as e:
                raise ConfigError(f"resource {name}: bad uri: {e}") from None
    else:
        if not (isinstance(address, (tuple, list)) and len(address) == 2):
            raise ConfigError(f"resource {name}: server_address must be (host, port), or give a uri")
        host, port = str(address[0]), int(address[1])
        if (username is None) != (password is None):
            raise ConfigError(f"resource {name}: username and password go together")
        credentials = "" if username is None else f"{quote_plus(str(username))}:{quote_plus(str(password))}@"
        uri = f"mongodb://{credentials}{f'[{host}]' if ':' in host else host}:{port}/"
        if auth_database is not None:
            if username is None:
                raise ConfigError(f"resource {name}: auth_database is where username is defined: give both")
            uri += f"?authSource={quote_plus(str(auth_database))}"
    if not isinstance(database, str) or not database:
        raise ConfigError(f"resource {name}: database must name the database (or the uri its path)")
    return uri, database


def _hosts(uri: str) -> str:
    """The URI without its credentials, for messages."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _named_collection(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The collection of `xa.<name>("coll")` or `xa.<name>(collection="coll")`, if any."""
    extra = set(kwargs) - {"collection"}
    if extra or len(args) > 1 or (args and kwargs):
        raise ResourceInputParameterError(f"resource {name} takes one argument: the collection, as "
                                          f"xa.{name.partition('/')[0]}(collection=\"name\")")
    named = args[0] if args else kwargs.get("collection")
    return None if named is None else _collection_name(name, named)


def _collection_name(resource_name: str, name: Any) -> str:
    if not isinstance(name, str) or not name or "$" in name or "\x00" in name or ".." in name \
            or name.startswith(".") or name.endswith("."):
        raise ResourceInputParameterError(f"resource {resource_name}: {name!r} is not a collection name")
    return name


def _no_collection(name: str, operation: str, *args: Any, **kwargs: Any) -> Any:
    resource_name = name.partition("/")[0]
    raise ResourceInputParameterError(f"resource {name}: {operation} needs a collection: "
                                      f"xa.{resource_name}.<collection>.{operation}(...) or "
                                      f"xa.{resource_name}(collection=\"...\").{operation}(...)")


def _direction(value: Any) -> bool:
    """1, -1, or {"$meta": "textScore"}."""
    return isinstance(value, Mapping) or (type(value) is int and value in (1, -1))


def _command_name(command: str | Mapping[str, Any]) -> str:
    return command if isinstance(command, str) else str(next(iter(command)))


def _updated(result: Any) -> dict[str, Any]:
    return {"matched": result.matched_count, "modified": result.modified_count, "upserted_id": result.upserted_id}


def _close(client: pymongo.MongoClient[Document]) -> None:
    """Close, never raising and never waiting long: close() may send endSessions to the server."""
    try:
        with pymongo.timeout(_closing_time()):
            client.close()
    except PyMongoError:
        pass


def _closing_time() -> float:
    return max(min(DISCONNECT_TIMEOUT, _remain()), 0.001)  # pymongo.timeout(0) would be no timeout


def _remain() -> float:
    request = _request.current()
    return NO_DEADLINE if request.deadline is None else request.remain


def _code(e: OperationFailure) -> int | None:
    """The server's code; for a bulk write the first write error's (11000 for a duplicate key)."""
    if isinstance(e, BulkWriteError):
        errors = (e.details or {}).get("writeErrors") or []
        if errors and isinstance(errors[0], Mapping) and errors[0].get("code") is not None:
            return int(errors[0]["code"])
    return e.code


def _translate(e: Exception, name: str, doing: str) -> ResourceError:
    """pymongo's errors, once, as ResourceError: input errors sent nothing; server errors keep the
    connection; connection errors (dead, hung, unreachable server) discard it."""
    if isinstance(e, ResourceError):
        return e
    text = f"resource {name}: {doing}: {exc_string(e, stack=False)}"
    if isinstance(e, (TypeError, ValueError, InvalidName, InvalidDocument, InvalidStringData)):
        return ResourceInputParameterError(text)
    if not isinstance(e, PyMongoError):
        return ResourceError(text, recoverable=False, terminal=True)
    if e.timeout:
        text = f"resource {name}: request deadline: {doing}: {exc_string(e, stack=False)}"
    if isinstance(e, ExecutionTimeout):  # the server gave up at maxTimeMS: the connection is fine
        return ResourceError(text, code=e.code, recoverable=False, terminal=False)
    if isinstance(e, OperationFailure):
        # an aborted transaction did nothing: the whole transaction may be retried
        transient = e.has_error_label("TransientTransactionError")
        return ResourceError(text, code=_code(e), recoverable=transient, terminal=False)
    if isinstance(e, ServerSelectionTimeoutError):  # no server to send anything to
        return ResourceError(text, recoverable=True, terminal=True)
    if isinstance(e, ConnectionFailure):  # broken or timed out mid-call: it may have been done
        return ResourceError(text, recoverable=False, terminal=True)
    return ResourceError(text, recoverable=False, terminal=True)
