"""Retried calls kept in JetStream (config_cluster.py retry_store = "jetstream"): the flock's stream,
the sealed messages, the consumer of a queue and the ids of the calls that have run.

    stream PMNC_<flock>           subjects pmnc.<flock>.retry.<cage>.<queue>: one message per call,
                                  file storage, jetstream_replicas, duplicates (header Nats-Msg-Id =
                                  the call's de-duplication id) dropped for jetstream_duplicate_window
    consumer <cage>__<queue>      durable, pull, explicit acks: shared by every instance of the cage
                                  (the catch-all queue's consumer <cage>__retry filters all of the
                                  cage's queues, pmnc.<flock>.retry.<cage>.>)
    KV bucket PMNC_<flock>_done   one key per call that has run (sha256 of its de-duplication id),
                                  kept for retention_time: a call delivered again is not run again

Limits retention: a message stays in the stream after its ack, so the consumer that ran it deletes
it (a consumer made later, for a queue that gets an interface of its own, does not find it).

A message is `MAGIC`, an HMAC-SHA256 under the flock's cluster key (cages/.shared/ssl_keys) of the
subject and the frame, and the frame (codec.py) of the call. A party that can publish on the
subject but holds no cluster key cannot queue a call; within the flock a cage is trusted to name
itself as the source, as in discovery adverts.

Everything nats-py does runs on the bus's loop (`bus.run`); the callers are threads.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from pmnc import log
from pmnc.errors import ProtocolError, ResourceError, ResourceInputParameterError
from pmnc.rpc import codec, wire

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from pmnc.rpc.bus import Bus
    from pmnc.rpc.cluster import Cluster, ClusterHandle

T = TypeVar("T")

MAGIC = b"PMNC-RT1"
MAC_SIZE = 32
CATCH_ALL = "retry"  # the queue whose consumer filters all of a cage's queues (retry.CATCH_ALL)
API_TIMEOUT = 5.0  # seconds one JetStream API request may take (stream, consumer, KV)
ACK_TIMEOUT = 5.0  # seconds the server may take to confirm an ack
PUBLISH_ATTEMPT = 2.0  # seconds one attempt at publishing a call waits for JetStream's answer
PUBLISH_PAUSE = 0.2  # seconds between attempts
SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,512}")  # what Nats-Msg-Id carries as it is


class JetStreamError(ResourceError):
    """JetStream cannot take, give or settle a retried call now."""

    def __init__(self, message: str) -> None:
        super().__init__(message, recoverable=True, terminal=False)


# --- names ---------------------------------------------------------------------------------------------


def stream_name(flock: str) -> str:
    return f"PMNC_{flock}"


def done_bucket(flock: str) -> str:
    return f"PMNC_{flock}_done"


def subject(flock: str, cage: str, queue: str) -> str:
    return f"pmnc.{flock}.retry.{cage}.{queue}"


def check_queue(queue: str) -> None:
    """A queue name is one or more subject tokens: not empty between its dots."""
    if not all(SUBJECT_TOKEN.fullmatch(token) for token in queue.split(".")):
        raise ResourceInputParameterError(f"queue name {queue!r} cannot be kept in JetStream: no empty part "
                                          f"between dots, nor a dot first or last")


def consumer_name(cage: str, queue: str) -> str:
    """Durable names have no dots: a queue with dots gets a digest to stay apart from its look-alikes."""
    if "." not in queue:
        return f"{cage}__{queue}"
    return f"{cage}__{queue.replace('.', '_')}_{hashlib.sha256(queue.encode()).hexdigest()[:8]}"


def dedupe_id(source: str, queue: str, filtered: str) -> str:
    """What de-duplicates a call: as in the local store, one id per queue of the caller's cage."""
    return f"{source}/{queue}/{filtered}"


def msg_id(dedupe: str) -> str:
    """Nats-Msg-Id: the de-duplication id, or its digest when it is no header value."""
    return dedupe if HEADER_SAFE.fullmatch(dedupe) else "sha256:" + hashlib.sha256(dedupe.encode()).hexdigest()


def done_key(dedupe: str) -> str:
    return hashlib.sha256(dedupe.encode("utf-8", "surrogatepass")).hexdigest()


def is_jetstream(handle: ClusterHandle) -> bool:
    """Whether the cage keeps its retried calls in JetStream - read from config_cluster.py, without
    making the cluster (a cage that keeps them locally may never need one)."""
    return bool(handle.settings()["retry_store"] == "jetstream")


# --- the flock's stream ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    """One retried call read from its message."""

    source: str
    queue: str
    rt_id: str
    dedupe: str
    module: str
    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    request: dict[str, Any]  # id, parameters, log_levels, description
    start: float
    expires: float | None


class Stream:
    """The flock's stream as one cage uses it (one per Cluster, `of(cluster)`)."""

    def __init__(self, cluster: Cluster) -> None:
        assert cluster.bus is not None
        self.bus: Bus = cluster.bus
        self.flock, self.cage = cluster.flock, cluster.cage
        self.name = stream_name(self.flock)
        self.replicas = int(cluster.settings["jetstream_replicas"])
        self.duplicate_window = float(cluster.settings["jetstream_duplicate_window"])
        self.max_frame_size, self.use_pickle = cluster.max_frame_size, cluster.use_pickle
        self._key = cluster.keys.hmac_key
        self._ready = False
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float, doing: str) -> T:
        """`coro` on the bus's loop; nats-py's failures as JetStreamError saying what failed."""
        try:
            return self.bus.run(coro, timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            raise JetStreamError(f"JetStream has not answered within {timeout:.1f}s {doing}") from None
        except nats.js.errors.NoStreamResponseError:
            raise JetStreamError(f"JetStream does not answer {doing}: is it enabled on the NATS servers?") \
                from None
        except nats.errors.Error as e:
            raise JetStreamError(f"JetStream has failed {doing}: {type(e).__name__} {e}".rstrip()) from None

    def js(self) -> JetStreamContext:
        return self.bus.jetstream()

    def ensure(self, timeout: float = API_TIMEOUT) -> None:
        """The stream, made if missing (once per cage run; again after it was found missing)."""
        if self._ready:
            return
        with self._lock:
            if not self._ready:
                self.run(self._ensure(), timeout, f"making stream {self.name}")
                self._ready = True

    async def _ensure(self) -> None:
        js = self.js()
        try:
            await js.stream_info(self.name)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = api.StreamConfig(name=self.name, subjects=[f"pmnc.{self.flock}.retry.>"],
                                  storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS,
                                  num_replicas=self.replicas, duplicate_window=self.duplicate_window)
        await js.add_stream(config)
        log.message(f"JetStream: stream {self.name} made, {self.replicas} replica(s)")

    # --- the caller's side --------------------------------------------------------------------------

    def encode(self, target: str, queued: Queued) -> tuple[str, bytes]:
        """The subject and sealed message of a call; ResourceInputParameterError if it cannot go."""
        check_queue(queued.queue)
        to = subject(self.flock, target, queued.queue)
        body = {"source": queued.source, "queue": queued.queue, "rt_id": queued.rt_id, "dedupe": queued.dedupe,
                "module": queued.module, "method": queued.method, "args": queued.args, "kwargs": queued.kwargs,
                "request": queued.request, "start": queued.start, "expires": queued.expires}
        try:
            frame = codec.encode(body, limit=self.max_frame_size, use_pickle=self.use_pickle)
        except ProtocolError as e:
            raise ResourceInputParameterError(f"retried call {queued.module}.{queued.method} cannot be sent to "
                                              f"cage {target}: {e}") from None
        data = MAGIC + self._mac(to, frame) + frame
        if len(data) > self.bus.max_payload:
            raise ResourceInputParameterError(f"retried call {queued.module}.{queued.method}: {len(data)} bytes "
                                              f"exceed the NATS server's max_payload of {self.bus.max_payload} "
                                              f"bytes")
        return to, data

    def publish(self, to: str, data: bytes, dedupe: str, timeout: float) -> bool:
        """Kept by JetStream (acknowledged) within `timeout`: True, or False for a duplicate of a
        call published before within the duplicate window. JetStreamError: the call is not queued.
        An attempt that gets no answer (a stream leader lost with its node) is made again with the
        same Nats-Msg-Id, so that it is kept once; a "duplicate" after such an attempt is ours."""
        deadline = time.monotonic() + timeout
        headers = {"Nats-Msg-Id": msg_id(dedupe)}
        unanswered = False
        while True:
            left = deadline - time.monotonic()
            try:
                self.ensure(max(left, 0.05))
                attempt = max(min(left, PUBLISH_ATTEMPT), 0.05)
                ack = self.run(self.js().publish(to, data, timeout=attempt, headers=headers), attempt + 1.0,
                               f"keeping a retried call on {to}")
                return unanswered or not ack.duplicate
            except JetStreamError:
                self._ready = False  # the stream may have gone: looked for again
                unanswered = True
                if deadline - time.monotonic() < PUBLISH_PAUSE * 2:
                    raise
            time.sleep(PUBLISH_PAUSE)  # a leader being elected: a moment before the next attempt

    def _mac(self, to: str, frame: bytes) -> bytes:
        return hmac.new(self._key, MAGIC + to.encode() + b"\0" + frame, hashlib.sha256).digest()

    # --- the runner's side ------------------------------------------------------------------------

    def decode(self, to: str, data: bytes) -> Queued:
        """The call a message carries; ProtocolError for anything not sealed by the flock or malformed."""
        if len(data) < len(MAGIC) + MAC_SIZE + codec.HEADER_SIZE or not data.startswith(MAGIC):
            raise ProtocolError("not a retried call of pmnc")
        mac, frame = data[len(MAGIC):len(MAGIC) + MAC_SIZE], data[len(MAGIC) + MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(to, frame)):
            raise ProtocolError("not sealed with the flock's cluster key")
        kind, length = codec.parse_header(frame[:codec.HEADER_SIZE], limit=self.max_frame_size,
                                          allow_pickle=self.use_pickle)
        if length != len(frame) - codec.HEADER_SIZE:
            raise ProtocolError("a frame whose length is not its header's")
        return self._checked(to, codec.decode_body(kind, frame[codec.HEADER_SIZE:], allow_pickle=self.use_pickle))

    def _checked(self, to: str, m: Any) -> Queued:
        from pmnc.loader import MODULE_NAME  # a leaf of the loader: the names of modules

        if not isinstance(m, dict):
            raise ProtocolError("a retried call that is not a dict")
        names = (m.get("source"), m.get("queue"), m.get("rt_id"), m.get("dedupe"), m.get("module"), m.get("method"))
        request, start, expires = m.get("request"), m.get("start"), m.get("expires")
        if not (all(isinstance(x, str) and 0 < len(x) <= 1024 for x in names)
                and MODULE_NAME.fullmatch(m["module"]) and MODULE_NAME.fullmatch(m["method"])
                and not m["module"].startswith("_") and not m["method"].startswith("_")
                and isinstance(m.get("args"), (list, tuple)) and isinstance(m.get("kwargs"), dict)
                and all(isinstance(k, str) for k in m["kwargs"]) and isinstance(request, dict)
                and isinstance(start, (int, float)) and (expires is None or isinstance(expires, (int, float)))):
            raise ProtocolError("a malformed retried call")
        if to != subject(self.flock, self.cage, m["queue"]):
            raise ProtocolError(f"a retried call for queue {m['queue']} on subject {to}")
        source = m["source"]
        if source == self.cage:  # queued here: its parameters as they were
            parameters = {k: v for k, v in (request.get("parameters") or {}).items() if isinstance(k, str)}
        else:  # from another cage: what a synchronous call from there would bring
            parameters = wire.received_parameters(request.get("parameters"), source)
        levels = [x for x in request.get("log_levels") or () if isinstance(x, int)]
        description = request.get("description")
        queued = {"id": str(request.get("id") or m["rt_id"]), "parameters": parameters, "log_levels": levels,
                  "description": description if isinstance(description, str) else None}
        return Queued(source, m["queue"], m["rt_id"], m["dedupe"], m["module"], m["method"], list(m["args"]),
                      m["kwargs"], queued, float(start), None if expires is None else float(expires))


_streams: weakref.WeakKeyDictionary[Cluster, Stream] = weakref.WeakKeyDictionary()
_streams_lock = threading.Lock()


def of(cluster: Cluster) -> Stream:
    """The cage's Stream for its running cluster; JetStreamError if the cluster has no NATS."""
    if cluster.bus is None:
        raise JetStreamError("retried calls kept in JetStream need a NATS connection (config_cluster.py)")
    with _streams_lock:
        stream = _streams.get(cluster)
        if stream is None:
            stream = _streams[cluster] = Stream(cluster)
        return stream


# --- a queue's consumer ----------------------------------------------------------------------------


class Consumer:
    """The durable pull consumer of one (cage, queue), and the done ids: what an engine calls,
    from its threads. Settling a message (ack, nak, term) is waited for, bounded."""

    def __init__(self, stream: Stream, queue: str, *, max_ack_pending: int, ack_wait: float,
                 retention_time: float) -> None:
        check_queue(queue)
        self.stream, self.queue = stream, queue
        self.name = consumer_name(stream.cage, queue)
        catch_all = queue == CATCH_ALL
        self.filter = f"pmnc.{stream.flock}.retry.{stream.cage}." + (">" if catch_all else queue)
        self.config = api.ConsumerConfig(durable_name=self.name, filter_subject=self.filter,
                                         deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.EXPLICIT,
                                         ack_wait=ack_wait, max_ack_pending=max_ack_pending, max_deliver=-1)
        self.retention_time = retention_time
        self._sub: JetStreamContext.PullSubscription | None = None
        self._kv: KeyValue | None = None

    def open(self) -> None:
        """The stream, the consumer (made, or its settings brought up to date) and the done bucket."""
        self.stream.ensure()
        self._sub = self.stream.run(self._open(), API_TIMEOUT * 3, f"opening consumer {self.name}")

    async def _open(self) -> JetStreamContext.PullSubscription:
        js = self.stream.js()
        await js.add_consumer(self.stream.name, self.config)  # creates, or updates what may change
        bucket = done_bucket(self.stream.flock)
        try:
            self._kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await js.create_key_value(bucket=bucket, history=1, ttl=self.retention_time,
                                                 replicas=self.stream.replicas, storage=api.StorageType.FILE)
        return await js.pull_subscribe_bind(durable=self.name, stream=self.stream.name)

    def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                self.stream.run(sub.unsubscribe(), API_TIMEOUT, "closing a consumer")
            except Exception as e:
                log.debug(f"JetStream: closing consumer {self.name}: {e!r}")

    def fetch(self, count: int, wait: float) -> list[Msg]:
        """Up to `count` messages, waiting up to `wait` seconds for the first."""
        if self._sub is None:
            raise JetStreamError(f"consumer {self.name} is not open")
        try:
            return self.stream.bus.run(self._sub.fetch(count, timeout=wait), wait + API_TIMEOUT)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as e:
            raise JetStreamError(f"JetStream has failed giving the calls of consumer {self.name}: "
                                 f"{type(e).__name__} {e}".rstrip()) from None

    def decode(self, msg: Msg) -> Queued:
        return self.stream.decode(msg.subject, msg.data)

    def ack(self, msg: Msg, forget: bool = True) -> None:
        """Done with: acknowledged and, when `forget`, deleted from the stream (see the module's doc)."""
        self.stream.run(msg.ack_sync(timeout=ACK_TIMEOUT), ACK_TIMEOUT + 1.0, "acknowledging a retried call")
        if forget:
            self.forget(msg)

    def nak(self, msg: Msg, delay: float) -> None:
        """Delivered again after `delay` seconds (at once for 0)."""
        self.stream.run(msg.nak(delay=delay or None), ACK_TIMEOUT, "giving back a retried call")

    def term(self, msg: Msg) -> None:
        self.stream.run(msg.term(), ACK_TIMEOUT, "dropping a retried call")
        self.forget(msg)

    def forget(self, msg: Msg) -> None:
        """Deleted from the stream; left there if that fails (the done ids keep it from running again)."""
        try:
            sequence = msg.metadata.sequence.stream
            self.stream.run(self.stream.js().delete_msg(self.stream.name, sequence), API_TIMEOUT,
                            "deleting a retried call that has run")
        except Exception as e:
            log.debug(f"JetStream: a retried call stays in stream {self.stream.name}: {e!r}")

    def has_run(self, dedupe: str) -> bool:
        kv = self._kv
        assert kv is not None

        async def get() -> bool:
            try:
                entry = await kv.get(done_key(dedupe))
            except nats.js.errors.KeyNotFoundError:
                return False
            return entry.value is not None

        return self.stream.run(get(), API_TIMEOUT, "looking up the calls that have run")

    def mark_run(self, dedupe: str, rt_id: str) -> None:
        kv = self._kv
        assert kv is not None
        self.stream.run(kv.put(done_key(dedupe), rt_id.encode()), API_TIMEOUT, "recording a call that has run")

    def counts(self) -> tuple[int, int]:
        """(messages not yet delivered, delivered and not yet settled) of the consumer."""
        info = self.stream.run(self.stream.js().consumer_info(self.stream.name, self.name), API_TIMEOUT,
                               f"counting the calls of consumer {self.name}")
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    def __repr__(self) -> str:
        return f"<JetStream consumer {self.name} of {self.filter}>"
