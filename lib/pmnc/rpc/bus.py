"""The cage's connection to a NATS cluster (config_cluster.py transport "nats"), on a loop of its own.

nats-py is asyncio; the cage's callers are worker threads. The bus runs the
client on an event-loop thread of its own (not the cage's: a busy interface
there must not hold up every cage call) and offers what the threads need:

    request(subject, payload, timeout)   blocking, one NATS request/reply
    publish(subject, payload)            fire and forget (a callee's answers)
    subscribe(subject, queue, handler)   handler(data, reply) runs on the bus loop

Requests share one wildcard reply subscription (`_INBOX.<nuid>.*`) and a
thread waits on a lock of its own, not on an asyncio future: a call costs
one wake-up of the loop for however many threads publish between two of
its turns. Two shortcuts through nats-py's insides halve the time of a
round trip (bench/rpc_calls.py): messages are handed to the handler as the
client reads them (`_Sink`, not a task per subscription woken per message),
and what threads publish is written to the socket at once when nothing else
waits to go (not through the client's flusher task). Where those insides
are not what they were, the bus falls back to the public API.

The client reconnects for ever, to any server it was given or has learnt
of; while it is disconnected, what is published waits in its buffer and
goes out on reconnection, so a call made meanwhile runs if NATS comes back
within its deadline. Answers to calls that were on their way when a server
died are lost with it: those calls end at their deadline.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.protocol.command import pub_cmd

from pmnc import log
from pmnc.errors import ResourceError
from pmnc.loop import EventLoopThread

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD = 1048576  # bytes, nats-server's default: assumed until the server says
RECONNECT_WAIT = 0.5  # seconds between attempts at one server
MAX_GATHERED = 10000  # answers a gather keeps
PENDING_SIZE = 8 * 1048576  # bytes published while disconnected, kept for the reconnection


class NatsError(ResourceError):
    """NATS cannot take or deliver a call: not connected, nobody serving, no answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, recoverable=True, terminal=False)


class NatsTimeout(NatsError):
    pass


class NatsNoResponders(NatsError):
    pass


class _Waiter:
    """One request's answer, waited for by a thread: a lock released when it comes."""

    __slots__ = ("data", "error", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.data: bytes = b""
        self.error: NatsError | None = None

    def settle(self, data: bytes = b"", error: NatsError | None = None) -> None:
        self.data, self.error = data, error
        self.lock.release()


class _Sink:
    """Stands for a subscription's message queue: each message goes to `handler(msg)` as the
    client reads it, on the bus's loop."""

    def __init__(self, handler: Callable[[Msg], None], subject: str) -> None:
        self.handler, self.subject = handler, subject

    def put_nowait(self, msg: Msg) -> None:
        try:
            self.handler(msg)
        except Exception as e:  # a handler's bug must not break the client's reading
            log.error(f"NATS: a message on {self.subject} could not be handled: {e!r}")

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        pass


async def _subscribe(nc: Client, subject: str, queue: str, handler: Callable[[Msg], None]) -> Any:
    """A subscription whose messages go straight to `handler` (see _Sink), or, should the client
    not keep its queue where it did, through a callback task as the public API does."""
    sink = _Sink(handler, subject)
    sub = await nc.subscribe(subject, queue=queue, pending_bytes_limit=0)
    if isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue) and getattr(sub, "_cb", 1) is None:
        sub._pending_queue = sink  # type: ignore[assignment]
        return sub
    await sub.unsubscribe()

    async def deliver(msg: Msg) -> None:
        sink.put_nowait(msg)

    return await nc.subscribe(subject, queue=queue, cb=deliver)


class Bus:
    def __init__(self, settings: dict[str, Any], *, name: str, label: str, tls: ssl.SSLContext | None) -> None:
        self.label = label  # who connects, for the log: "cluster: cage X of flock F"
        self.servers: list[str] = list(settings["nats_servers"])
        self._options = {"name": name, "tls": tls, "user": settings["nats_user"],
                         "password": settings["nats_password"], "token": settings["nats_token"],
                         "user_credentials": settings["nats_creds"]}
        self._thread = EventLoopThread("nats")
        self.loop = self._thread.loop
        self.nc = Client()
        self._waiting: dict[str, _Waiter] = {}  # reply token → the thread waiting for it
        self._gathering: dict[str, list[bytes]] = {}  # reply token → the answers of a gather so far
        self._tokens = itertools.count()
        self._inbox = ""  # the prefix of reply subjects, set once connected
        self._outbox: collections.deque[tuple[str, str, bytes, str | None]] = collections.deque()
        self._wakeup_pending = False
        self._loop_ident = -1  # the bus loop's thread, once running
        self._connected = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, list[Any]] = {}  # subject → its nats-py subscriptions
        self._stopped = False

    # --- life -------------------------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The largest message the server takes, in bytes (its INFO; the default before)."""
        return self.nc.max_payload if self.nc.is_connected else DEFAULT_MAX_PAYLOAD

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    def start(self, timeout: float) -> None:
        """Connect, waiting up to `timeout` seconds; after that the client goes on trying in
        the background (logged), and calls meanwhile wait for it within their deadlines."""
        self._thread.start()
        self.run(self._begin(), 5.0)
        if not self._connected_within(timeout):
            log.warning(f"NATS cannot be reached at {', '.join(self.servers)} within {timeout:.0f}s; "
                        f"trying on, calls fail at their deadlines until it can")

    async def _begin(self) -> None:
        self._loop_ident = threading.get_ident()
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        await self.nc.connect(servers=self.servers, allow_reconnect=True, max_reconnect_attempts=-1,
                              reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]  # a float works
                              connect_timeout=2, pending_size=PENDING_SIZE,
                              error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                              reconnected_cb=self._on_reconnected, **self._options)
        self._inbox = f"_INBOX.{self.nc._nuid.next().decode()}."
        await _subscribe(self.nc, self._inbox + "*", "", self._on_answer)
        self._connected.set()
        log.message(f"{self.label} connected to NATS at {connected_url(self)}")

    async def _on_error(self, e: Exception) -> None:
        if not self._stopped:
            log.debug(f"NATS: {type(e).__name__}: {e}")

    async def _on_disconnected(self) -> None:
        if not self._stopped:
            log.warning("disconnected from NATS, reconnecting")

    async def _on_reconnected(self) -> None:
        log.message(f"{self.label} reconnected to NATS at {connected_url(self)}")

    def stop(self) -> None:
        """Flush what is published and close the connection."""
        self._stopped = True
        try:
            self.run(self._close(), 5.0)
        except Exception as e:
            log.debug(f"NATS: closing: {e}")
        for token in list(self._waiting):
            waiter = self._waiting.pop(token, None)
            if waiter is not None:
                waiter.settle(error=NatsError("the cage is stopping"))
        self._thread.stop()

    async def _close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if not self.nc.is_closed:
            await self.nc.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the bus's loop and wait for its result, from any other thread."""
        return self._thread.run(coro, timeout)

    def jetstream(self) -> JetStreamContext:
        """The JetStream context of the connection: use it on the bus's loop only."""
        return self.nc.jetstream()

    # --- requests, answers, subscriptions ---------------------------------------------------------

    def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """The answer to `payload` sent on `subject`, waited for up to `timeout` seconds."""
        if not self._inbox:
            if not self._connected_within(timeout):
                raise NatsTimeout(f"NATS at {', '.join(self.servers)} has not been reached")
        token = str(next(self._tokens))
        waiter = self._waiting[token] = _Waiter()
        self._post(subject, self._inbox + token, payload, token)
        if not waiter.lock.acquire(timeout=max(timeout, 0.0)):
            self._waiting.pop(token, None)
            connected = "" if self.nc.is_connected else " (NATS is not connected)"
            raise NatsTimeout(f"no answer within {timeout:.1f}s{connected}")
        if waiter.error is not None:
            raise waiter.error
        return waiter.data

    def gather(self, subject: str, payload: bytes, wait: float) -> list[bytes]:
        """Every answer (at most MAX_GATHERED) to `payload` on `subject` that comes within
        `wait` seconds: from all its subscribers, not the first only (discovery)."""
        if not self._inbox and not self._connected_within(wait):
            return []
        token = str(next(self._tokens))
        answers = self._gathering[token] = []
        self._post(subject, self._inbox + token, payload, None)
        threading.Event().wait(wait)  # a window to listen in, not a readiness wait
        self._gathering.pop(token, None)
        return answers

    def _connected_within(self, timeout: float) -> bool:
        try:
            self.run(asyncio.wait_for(self._connected.wait(), timeout), timeout + 1.0)
        except TimeoutError:
            return False
        return True

    def publish(self, subject: str, payload: bytes) -> None:
        """Send `payload` on `subject`, from any thread; nothing is waited for."""
        self._post(subject, "", payload, None)

    def subscribe(self, subject: str, queue: str, handler: Callable[[bytes, str], None]) -> None:
        """`handler(data, reply_subject)` for each message on `subject`, one member of queue
        group `queue`; it runs on the bus's loop and must not block. Subscribed once connected
        (at once if it is), and again by the client on every reconnection."""
        async def subscribe() -> None:
            await self._connected.wait()
            sub = await _subscribe(self.nc, subject, queue, lambda msg: handler(msg.data, msg.reply))
            self._subscriptions.setdefault(subject, []).append(sub)

        future = asyncio.run_coroutine_threadsafe(subscribe(), self.loop)
        if self._connected.is_set():
            future.result(5.0)

    def unsubscribe_all(self, subject: str) -> None:
        """No more messages on `subject` (a callee ceasing): those already delivered go on."""
        async def unsubscribe() -> None:
            for sub in self._subscriptions.pop(subject, []):
                await sub.unsubscribe()
            if self.nc.is_connected:
                await self.nc.flush(timeout=2)

        try:
            self.run(unsubscribe(), 3.0)
        except Exception as e:
            log.debug(f"NATS: unsubscribing from {subject}: {e!r}")

    def _post(self, subject: str, reply: str, payload: bytes, token: str | None) -> None:
        """Queue a publish for the loop; one wake-up of the loop serves all queued meanwhile."""
        self._outbox.append((subject, reply, payload, token))
        if threading.get_ident() == self._loop_ident:  # a handler on the loop: no need to wake it
            self._send_outbox()
            return
        if not self._wakeup_pending:
            self._wakeup_pending = True
            try:
                self.loop.call_soon_threadsafe(self._send_outbox)
            except RuntimeError:  # the loop has closed: the cage is stopping
                self._fail(token, NatsError("the cage is stopping"))

    def _send_outbox(self) -> None:
        self._wakeup_pending = False  # first: what is posted from now on wakes the loop again
        if not self._outbox:
            return
        nc = self.nc
        transport = getattr(nc, "_transport", None)
        if nc.is_connected and transport is not None and not getattr(nc, "_pending", True):
            self._write_outbox(transport)  # the socket's turn is now: nothing of the client's waits
        else:
            self.loop.create_task(self._publish_outbox())

    def _write_outbox(self, transport: Any) -> None:
        outbox, limit, commands = self._outbox, self.nc.max_payload, []
        while outbox:
            subject, reply, payload, token = outbox.popleft()
            if len(payload) > limit:
                self._fail(token, NatsError(f"{len(payload)} bytes exceed the NATS server's max_payload of "
                                            f"{limit} bytes"))
            else:
                commands.append(pub_cmd(subject, reply, payload))
        try:
            transport.writelines(commands)
        except Exception as e:  # the connection broke: the client sees it too and reconnects
            log.debug(f"NATS: writing: {e!r}")

    async def _publish_outbox(self) -> None:
        outbox = self._outbox
        while outbox:
            subject, reply, payload, token = outbox.popleft()
            try:
                await self.nc.publish(subject, payload, reply=reply)
            except nats.errors.MaxPayloadError:
                self._fail(token, NatsError(f"{len(payload)} bytes exceed the NATS server's max_payload "
                                            f"of {self.max_payload} bytes"))
            except Exception as e:  # closed, or the reconnection buffer is full
                self._fail(token, NatsError(f"NATS cannot take the message: {type(e).__name__} {e}".rstrip()))

    def _fail(self, token: str | None, error: NatsError) -> None:
        waiter = self._waiting.pop(token, None) if token is not None else None
        if waiter is not None:
            waiter.settle(error=error)

    def _on_answer(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox):]
        gathered = self._gathering.get(token)
        if gathered is not None:
            if msg.data and len(gathered) < MAX_GATHERED:
                gathered.append(msg.data)
            return
        waiter = self._waiting.pop(token, None)
        if waiter is None:
            return  # its caller has given up
        if not msg.data:  # NATS's own "no responders" (status 503): no answer of ours is empty
            waiter.settle(error=NatsNoResponders("nobody subscribes"))
        else:
            waiter.settle(msg.data)


def connected_url(bus: Bus) -> str:
    url = bus.nc.connected_url
    return url.geturl() if url is not None else ", ".join(bus.servers)
