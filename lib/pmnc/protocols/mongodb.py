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

A collection whose name is taken by the resource itself (the lifecycle names
of pmnc.resource.LIFECYCLE, the operations above, `collection`, `command`,
`created`, `used`, `idle_timeout`, `max_age`, `expire`, `mark_used`,
`last_resource`, `preparable`, `inline`, names starting with "_") is named
in the resource's arguments instead: `xa.mongo(collection="config").find()`
or `xa.mongo("config").find()`. (A transaction registers its participant
when a call is made, so `xa.mongo.collection("config").find()` cannot chain;
`collection(name)` serves code that holds a connection itself.)

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
from pymongo.uri_parser import parse_uri

from pmnc import log, resource
from pmnc import request as _request
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError, exc_string
from pmnc.schema import RESOURCE_KEYS, Key, resource_file

T = TypeVar("T")
Document = dict[str, Any]

OPERATIONS = frozenset({"insert_one", "insert_many", "find", "find_one", "update_one", "update_many", "delete_one",
                        "delete_many", "aggregate", "count_documents"})
# The keys of config_resource_<name>.py (a module constant: resource attributes are collections);
# resource_name, the "b" of a pool named mongo__b (pools.py), is accepted and nothing depends on it.
KEYS = RESOURCE_KEYS.extend(
    uri=Key(None),  # mongodb:// or mongodb+srv://, instead of server_address, username and password
    server_address=Key(None), username=Key(None), password=Key(None),
    database=Key(None),  # or the uri's path
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
        ms = max(int(self._connect_timeout * 1000), 1)
        try:
            client: pymongo.MongoClient[Document] = pymongo.MongoClient(
                self._uri, maxPoolSize=1, minPoolSize=0, connectTimeoutMS=ms, serverSelectionTimeoutMS=ms,
                appname="pmnc", document_class=dict, tz_aware=True, uuidRepresentation="standard",
                type_registry=CODEC_OPTIONS.type_registry)
        except (ConfigurationError, InvalidURI, TypeError, ValueError) as e:
            raise ConfigError(f"resource {self.name}: {exc_string(e, stack=False)}") from None
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
        """A database command, as pymongo's `Database.command`, outside the transaction: the reply as a dict."""
        if not isinstance(command, (str, Mapping)) or not command:
            raise ResourceInputParameterError(f"resource {self.name}: a command is a name or a non-empty mapping")
        db, spec = self._database_or_fail(), command if isinstance(command, str) else dict(command)
        return self._call(f"command {_command_name(command)}",
                          lambda _session: db.command(spec, value, codec_options=CODEC_OPTIONS, **kwargs),
                          in_transaction=False)

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
             limit: int = 0) -> list[Document]:
        """Every matching document (all of the cursor, read within the deadline); `limit` 0 is no limit."""
        query, fields, order = self._filter(filter), self._projection(projection), self._sort(sort)
        skip, limit = self._count(skip, "skip"), self._count(limit, "limit")

        def read(c: _PymongoCollection[Document], s: ClientSession | None) -> list[Document]:
            with c.find(query, fields, sort=order, skip=skip, limit=limit, session=s) as cursor:
                return list(cursor)
        return self._run("find", read)

    def find_one(self, filter: Mapping[str, Any] | None = None,
                 projection: Mapping[str, Any] | Sequence[str] | None = None,
                 sort: Sequence[tuple[str, int]] | Mapping[str, int] | None = None) -> Document | None:
        found = self.find(filter, projection, sort, 0, 1)
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


# --- helpers -------------------------------------------------------------------------------------


def _target(name: str, config: Mapping[str, Any]) -> tuple[str, str]:
    """The URI to connect to and the database, from `uri` or `server_address`/`username`/`password`."""
    uri, address = config.get("uri"), config.get("server_address")
    username, password = config.get("username"), config.get("password")
    database = config.get("database")
    if uri is not None:
        if address is not None or username is not None or password is not None:
            raise ConfigError(f"resource {name}: uri replaces server_address, username and password: "
                              f"set those to None")
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
