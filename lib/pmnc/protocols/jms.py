"""JMS over STOMP (ActiveMQ): the interface takes messages from a queue (or a durable topic
subscription) as requests, the resource sends messages inside a transaction.

The original ran a JVM adapter per interface and per connection; pmnc speaks STOMP 1.2 to
the broker with stomp.py. What the user sees is the original's: `config_interface_<n>.py`
names `queue` (a JMS name, `"orders.in"`), `interface_<n>.process_request(request,
response)` gets `{message_id, message_text, headers}` with the JMS fields named as JMS
names them (`JMSMessageID`, `JMSCorrelationID`, `JMSRedelivered` "true"/"false", ...) and
every string property, and `xa.<resource>.send(message_text, **headers) -> message_id`
sends when the transaction commits.

The interface (at-least-once from the broker, effectively once for the handler):

    one STOMP connection; `concurrency` subscriptions to the queue, each with
    ack=client-individual and prefetch 1, each served by a thread of its own:
        message → already handled? (received.py, the cage's state) → ACK, the handler not run
                → the handler, under the cage's deadline (lifecycle.call)
                → success: marked handled, then ACK
                → failure or deadline: counted; below max_redeliveries the subscription is
                  dropped and made again after redelivery_delay (the broker then redelivers
                  the message, with redelivered:true, to whichever subscription is free);
                  at the limit: SEND to the dead-letter queue with the error + ACK, in one
                  STOMP transaction, logged once

Why not NACK: ActiveMQ takes a NACK as a poison ack and dead-letters the message at once,
without the error. Why not ABORT a transaction holding the ACK: ActiveMQ then keeps the
message dispatched to the same subscription, unacknowledged, and never redelivers it until
the subscription closes. Both were checked on ActiveMQ 5.17 (tests/test_jms.py).

The connection is kept by a maintainer thread: when the broker goes (or refuses the login)
it logs the outage once, reconnects with back-off, and logs once when it is back. Messages
in process when it went are not acknowledged; their copies come again and are acknowledged
without running the handler when it had succeeded.

The resource: one STOMP connection per pooled instance; `send` opens a STOMP transaction
(BEGIN) and sends into it; `commit` sends COMMIT and waits for the broker's receipt within
the deadline; `rollback` sends ABORT, and nothing reaches the queue. STOMP has no prepare:
in a `two_phase=True` transaction the resource is the one participant that cannot prepare,
committed last, after every other has prepared (transaction.py, the last resource).
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import stomp
import stomp.exception

from pmnc import interfaces, log, resource
from pmnc import request as _request
from pmnc.errors import (
    ConfigError,
    IntakeClosedError,
    RequestExpiredError,
    ResourceError,
    ResourceInputParameterError,
    exc_string,
)
from pmnc.received import Entry, Received
from pmnc.schema import RESOURCE_KEYS, Key, Schema, address, interface_file, resource_file, ssl_protocol_ignored

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

__all__ = ["Interface", "Resource"]


class _ConnectFailures(logging.Filter):
    """stomp.py logs every failed connect attempt and lost connection (the interface says it
    once), and tells why an attempt failed - refused, a certificate not trusted, a file not
    found - only there: the reason is kept for the caller's thread, the record dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._last = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == "could not connect to host %s, port %s: %s" and len(args) == 3:
            self._last.reason = str(args[2])
        elif record.msg == "Could not find file %s" and len(args) == 1:
            self._last.reason = f"no file {args[0]}"
        return record.levelno >= logging.CRITICAL

    def take(self) -> str | None:
        """Why the last connect attempt on this thread failed, if stomp.py said; once."""
        reason, self._last.reason = getattr(self._last, "reason", None), None
        return reason


CONNECT_FAILURES = _ConnectFailures()
logging.getLogger("stomp.py").setLevel(logging.WARNING)
logging.getLogger("stomp.py").addFilter(CONNECT_FAILURES)

MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # bytes of a message body, both ways (the broker has its own limit)
MAX_ERROR_TEXT = 2000  # characters of the error kept with a dead-lettered message
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0  # seconds between attempts to reach the broker
SWEEP_PERIOD = 60.0  # seconds between sweeps of the duplicate window
MARK_PERIOD = 0.1  # seconds between the writes of the ids just acknowledged, in one transaction

# A JMS destination name: printable, no white space (the broker's own wildcards and
# composites - * > , - mean something else there and are refused too).
DESTINATION_NAME = re.compile(r"[^\s*>,\x00-\x1f\x7f]{1,200}")
PROPERTY_NAME = re.compile(r"[A-Za-z0-9_]+")  # as the original: a string property's name

# JMS header field <-> STOMP header, as ActiveMQ maps them
JMS_FIELDS = {"JMSCorrelationID": "correlation-id", "JMSExpiration": "expires", "JMSPriority": "priority",
              "JMSType": "type"}
# Set by the broker on send, so ignored there (as a JMS provider ignores them); never properties
PROVIDER_FIELDS = frozenset({"JMSMessageID", "JMSRedelivered", "JMSTimestamp"})
# STOMP headers of a MESSAGE frame that are not string properties
STOMP_HEADERS = frozenset({"destination", "message-id", "ack", "subscription", "content-length", "content-type",
                           "expires", "priority", "persistent", "redelivered", "timestamp", "type",
                           "correlation-id", "reply-to", "transaction", "receipt", "id"})
PMNC_MESSAGE_ID = "pmnc_message_id"  # the property carrying the id `send` returns (STOMP gives none back)
DLQ_CAUSE = "dlqDeliveryFailureCause"  # the property ActiveMQ's own dead-letter copies carry

# The original's keys for its JVM adapter: no JVM here, the broker is reached over STOMP.
_jvm_note = "{!r} is not used: pmnc reaches the broker over STOMP (server_address), no JVM".format


def _jvm_key_ignored(value: Any) -> str | None:
    return None if value is None else _jvm_note(value)


CONNECTION_KEYS = Schema(
    server_address=Key(None, address),  # (host, port) of the broker's STOMP connector
    username=Key(None), password=Key(None),  # None: anonymous
    connect_timeout=Key(5.0, float),
    heartbeat=Key(10.0, float),  # seconds between heart-beats both ways (0: none); a silent broker is lost
    max_message_size=Key(MAX_MESSAGE_SIZE, int),
    ssl_ca_cert_file=Key(None), ssl_key_cert_file=Key(None),  # TLS (the broker verified) if a CA is given
    ssl_protocol=Key(None, note=ssl_protocol_ignored),
    java=Key(None, note=_jvm_key_ignored), arguments=Key(None, note=_jvm_key_ignored),
    classpath=Key(None, note=_jvm_key_ignored), jndi=Key(None, note=_jvm_key_ignored),
    factory=Key(None, note=_jvm_key_ignored),
)


HANDLED = Entry(handled=True, failures=0, last_error="")


class BrokerError(Exception):
    """The broker cannot be reached, or it answered with an ERROR frame (`answered`: a wrong
    password, say - something for a person to fix, rather than to wait out)."""

    def __init__(self, text: str, *, answered: bool = False) -> None:
        super().__init__(text)
        self.answered = answered


def destination(kind: str, name: Any, file: str) -> str:
    """The STOMP destination of JMS queue (or topic) `name`; "/queue/x" is taken as it is."""
    if not isinstance(name, str):
        raise ConfigError(f"{file}: {kind} must be a {kind} name, like \"orders.in\"")
    for prefix in ("/queue/", "/topic/"):
        if name.startswith(prefix):
            kind, name = prefix.strip("/"), name[len(prefix):]
    if not DESTINATION_NAME.fullmatch(name):
        raise ConfigError(f"{file}: {kind} name {name!r} is not usable: 1 to 200 printable characters, "
                          f"no white space, none of * > , (the broker's wildcards and lists)")
    return f"/{kind}/{name}"


def jms_name(stomp_destination: str) -> str:
    """"/queue/orders.in" -> "orders.in", as the original gave JMSReplyTo."""
    for prefix in ("/queue/", "/topic/", "/temp-queue/", "/temp-topic/"):
        if stomp_destination.startswith(prefix):
            return stomp_destination[len(prefix):]
    return stomp_destination


def jms_headers(stomp_headers: dict[str, str]) -> dict[str, str]:
    """The original's `headers`: the JMS fields as str, and every string property."""
    h = stomp_headers
    headers = {
        "JMSMessageID": h.get("message-id", ""),
        "JMSCorrelationID": h.get("correlation-id", ""),
        "JMSDeliveryMode": "2" if h.get("persistent") == "true" else "1",
        "JMSExpiration": h.get("expires", "0"),
        "JMSPriority": h.get("priority", "4"),
        "JMSRedelivered": "true" if h.get("redelivered") == "true" else "false",
        "JMSTimestamp": h.get("timestamp", "0"),
        "JMSType": h.get("type", ""),
        "JMSReplyTo": jms_name(h.get("reply-to", "")),
    }
    for key, value in h.items():
        if key not in STOMP_HEADERS:
            headers[key] = value
    return headers


def stomp_headers(headers: dict[str, Any], *, persistent: bool) -> dict[str, str]:
    """The STOMP headers of a message to send with the original's `**headers`: JMS* keys set
    the standard fields, other [A-Za-z0-9_]+ keys become string properties."""
    out = {"persistent": "true" if persistent else "false"}
    for key, value in headers.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ResourceInputParameterError(f"header {key} must be a str (or a number), not {type(value).__name__}")
        text = str(value)
        if key in PROVIDER_FIELDS:
            continue
        if key == "JMSDeliveryMode":
            if text not in ("1", "2"):
                raise ResourceInputParameterError("JMSDeliveryMode must be 1 (non-persistent) or 2 (persistent)")
            out["persistent"] = "true" if text == "2" else "false"
        elif key == "JMSReplyTo":
            out["reply-to"] = _destination_argument(text, key) if text else ""
        elif key in JMS_FIELDS:
            out[JMS_FIELDS[key]] = text
        elif key.startswith("JMS"):
            raise ResourceInputParameterError(f"{key} is not a JMS header field pmnc can set")
        elif not PROPERTY_NAME.fullmatch(key) or key in STOMP_HEADERS:
            raise ResourceInputParameterError(f"{key!r} cannot be a property name: [A-Za-z0-9_]+, and not one of "
                                              f"the STOMP headers ({', '.join(sorted(STOMP_HEADERS))})")
        else:
            out[key] = text
    return out


def _destination_argument(name: str, key: str) -> str:
    try:
        return destination("queue", name, key)
    except ConfigError as e:
        raise ResourceInputParameterError(str(e)) from None


def message_body(message: Any, limit: int) -> tuple[str | bytes, dict[str, str]]:
    """The frame body of a text (str) or bytes message, and the headers that say which."""
    if isinstance(message, str):
        if "\0" in message:
            raise ResourceInputParameterError("a text message cannot hold NUL characters over STOMP: send bytes")
        try:
            size = len(message.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise ResourceInputParameterError(f"the message text cannot be sent as UTF-8: {e}") from None
        extra: dict[str, str] = {}
    elif isinstance(message, (bytes, bytearray, memoryview)):
        message = bytes(message)
        size = len(message)
        extra = {"content-length": str(size)}  # with a length, ActiveMQ makes a BytesMessage
    else:
        raise ResourceInputParameterError(f"a message is text (str) or bytes, not {type(message).__name__}")
    if size > limit:
        raise ResourceInputParameterError(f"the message has {size} bytes, more than the limit of {limit} "
                                          f"(max_message_size)")
    return message, extra


# --- one STOMP connection ------------------------------------------------------------------------


class Link(stomp.ConnectionListener):  # type: ignore[misc]
    """A STOMP connection: opened within a time limit, frames handed to `on_message`, receipts
    and ERROR frames waited for within a time limit. stomp.py reads on a thread of its own."""

    def __init__(self, config: dict[str, Any], *, on_message: Callable[[Link, Any], None] | None = None,
                 on_lost: Callable[[Link], None] | None = None, client_id: str | None = None) -> None:
        self.config, self.on_message_cb, self.on_lost_cb, self.client_id = config, on_message, on_lost, client_id
        self.host, self.port = config["server_address"]
        self._cond = threading.Condition()
        self._connected = False
        self._lost = False
        self._error: str | None = None  # the last ERROR frame not answering a receipt
        self._receipts: dict[str, str | None] = {}  # receipt id -> None (waiting) | "" (received) | error
        self.conn: stomp.Connection12 | None = None

    @property
    def where(self) -> str:
        return f"{'stomp+ssl' if self.config['ssl_ca_cert_file'] else 'stomp'}://{self.host}:{self.port}"

    @property
    def stomp(self) -> stomp.Connection12:
        """stomp.py's connection, to send frames on."""
        if self.conn is None:
            raise stomp.exception.NotConnectedException()
        return self.conn

    @property
    def alive(self) -> bool:
        return self._connected and not self._lost

    def open(self, timeout: float) -> None:
        """Connect and log in within `timeout` seconds, or BrokerError."""
        until = time.monotonic() + max(timeout, 0.001)
        headers = {"client-id": self.client_id} if self.client_id else {}
        heartbeat = int(self.config["heartbeat"] * 1000)
        # stomp.py bounds the TCP connect (and TLS handshake) by `timeout`; it reconnects on its own
        # never (reconnect_attempts_max=1): the interface's maintainer does, with back-off and one log line
        self.conn = stomp.Connection12([(self.host, self.port)], reconnect_attempts_max=1,
                                       reconnect_sleep_initial=0.0, timeout=max(timeout, 0.001),
                                       heartbeats=(heartbeat, heartbeat), heart_beat_receive_scale=2.0,
                                       keepalive=True, auto_decode=False, auto_content_length=False)
        if self.config["ssl_ca_cert_file"]:
            key_cert = self.config["ssl_key_cert_file"]
            self.conn.set_ssl(for_hosts=[(self.host, self.port)], ca_certs=self.config["ssl_ca_cert_file"],
                              cert_file=key_cert, key_file=key_cert, ssl_version=ssl.PROTOCOL_TLS_CLIENT)
        self.conn.set_listener("pmnc", self)
        CONNECT_FAILURES.take()
        try:
            self.conn.connect(self.config["username"], self.config["password"], wait=False, headers=headers)
        except (stomp.exception.StompException, OSError, ssl.SSLError) as e:
            self.close()
            raise BrokerError(f"cannot connect to {self.where}: {CONNECT_FAILURES.take() or _why(e)}") from None
        try:  # BEGIN, SEND, COMMIT (and each ACK) go out as written, not held back by Nagle's algorithm
            self.conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass  # the connection is already gone: the wait below says so
        with self._cond:
            self._cond.wait_for(lambda: self._connected or self._lost or self._error is not None,
                                max(until - time.monotonic(), 0.0))
            error, connected = self._error, self._connected and not self._lost
        if not connected:
            self.close()
            if error is not None:
                raise BrokerError(f"broker at {self.where} refused the connection: {error}", answered=True)
            if self._lost:
                hint = "" if self.config["ssl_key_cert_file"] or not self.config["ssl_ca_cert_file"] else \
                    " (a broker that wants a client certificate does so: ssl_key_cert_file gives one)"
                raise BrokerError(f"broker at {self.where} closed the connection while logging in{hint}")
            raise BrokerError(f"broker at {self.where} did not answer the login within {timeout:.1f}s")

    def close(self) -> None:
        """DISCONNECT, then the socket closed at once: stomp.py's own stop waits for the broker
        without a limit. What was not acknowledged goes back to the broker's queue."""
        conn = self.conn
        if conn is not None:
            try:
                if conn.is_connected():
                    conn.disconnect()  # no receipt asked: not waited for
            except Exception:
                pass
            try:
                if conn.transport.socket is not None:
                    conn.transport.socket.settimeout(1.0)  # bounds a TLS close_notify exchange
                conn.transport.disconnect_socket()
            except Exception:
                pass
        with self._cond:
            self._lost = True
            self._cond.notify_all()

    def bound_sends(self, seconds: float) -> None:
        """Let a frame's send block at most `seconds` (a broker applying flow control stops
        reading): stomp.py writes with a blocking sendall. A send cut short leaves half a frame
        on the wire, so its error must drop the connection (a terminal ResourceError does).
        TLS connections are written by stomp.py's own thread, never blocking the caller."""
        conn = self.conn
        sock = conn.transport.socket if conn is not None else None
        if sock is None or self.config["ssl_ca_cert_file"]:
            return
        seconds = max(seconds, 0.001)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000)))

    def receipt(self) -> str:
        """A new receipt id to put on a frame and `await_receipt` for."""
        receipt = uuid.uuid4().hex
        with self._cond:
            self._receipts[receipt] = None
        return receipt

    def await_receipt(self, receipt: str, timeout: float, what: str) -> None:
        """Wait for the broker to confirm the frame; ResourceError if it refused, the link was
        lost or the time ran out (then nobody knows what became of it)."""
        with self._cond:
            self._cond.wait_for(lambda: self._receipts.get(receipt) is not None or self._lost, max(timeout, 0.0))
            outcome = self._receipts.pop(receipt, None)
        if outcome == "":
            return
        if outcome is not None:
            raise ResourceError(f"the broker refused {what}: {outcome}", recoverable=False)
        if self._lost:
            raise ResourceError(f"the connection to {self.where} was lost before the broker confirmed {what}",
                                recoverable=False)
        raise ResourceError(f"the broker did not confirm {what} within the deadline", recoverable=False)

    def take_error(self) -> str | None:
        """The last ERROR frame the broker sent outside a receipt, once."""
        with self._cond:
            error, self._error = self._error, None
        return error

    # --- stomp.py's listener ---------------------------------------------------------------

    def on_connected(self, frame: Any) -> None:
        with self._cond:
            self._connected = True
            self._cond.notify_all()

    def on_error(self, frame: Any) -> None:
        text = frame.headers.get("message") or _text(frame.body)
        receipt = frame.headers.get("receipt-id")
        with self._cond:
            if receipt is not None and receipt in self._receipts:
                self._receipts[receipt] = text or "an ERROR frame"
            else:
                self._error = text
            self._cond.notify_all()
        if self._connected:
            log.warning(f"broker at {self.where} says: {text}")

    def on_receipt(self, frame: Any) -> None:
        receipt = frame.headers.get("receipt-id")
        with self._cond:
            if receipt in self._receipts:
                self._receipts[receipt] = ""
                self._cond.notify_all()

    def on_message(self, frame: Any) -> None:
        if self.on_message_cb is not None:
            self.on_message_cb(self, frame)

    def on_disconnected(self) -> None:
        with self._cond:
            was = self._connected and not self._lost
            self._lost = True
            self._cond.notify_all()
        if was and self.on_lost_cb is not None:
            self.on_lost_cb(self)

    def on_heartbeat_timeout(self) -> None:
        log.warning(f"broker at {self.where} went silent (no heart-beat), the connection is dropped")


def _text(body: Any) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace").strip()
    return str(body or "").strip()


def _why(e: BaseException) -> str:
    text = exc_string(e, stack=False)
    return text if str(e) else f"{text} (refused or unreachable)"


# --- the interface -----------------------------------------------------------------------------


class Interface(interfaces.Interface):
    """Messages from a queue (or a durable topic subscription) as requests; see the module."""

    protocol = "jms"

    keys = (interfaces.Interface.keys | CONNECTION_KEYS).extend(
        queue=Key(None), topic=Key(None),  # exactly one: a JMS name, "orders.in"
        durable_subscription=Key(None),  # with topic: the subscription's name (messages wait while the cage is down)
        concurrency=Key(1, int),  # messages in process at once (1: one by one, in order, as the original)
        max_redeliveries=Key(6, int),  # failures after the first before the message goes to the dead-letter queue
        redelivery_delay=Key(1.0, float),  # seconds before a failed message comes again, doubling each time
        dead_letter_queue=Key("ActiveMQ.DLQ", str),
        duplicate_window=Key(86400.0, float),  # seconds a handled message's id keeps its copies from running
        bytes_messages=Key(False, bool),  # take bytes messages (request["message_bytes"]); else dead-lettered
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        c, file = self.config, interface_file(name)
        if c["server_address"] is None:
            raise ConfigError(f"{file}: server_address must be (host, port) of the broker's STOMP connector")
        if (c["queue"] is None) == (c["topic"] is None):
            raise ConfigError(f"{file}: give either queue or topic")
        if c["topic"] is not None and not c["durable_subscription"]:
            raise ConfigError(f"{file}: a topic is taken through a durable subscription: give "
                              f"durable_subscription a name (messages then wait while the cage is down)")
        self.destination = destination("queue", c["queue"], file) if c["queue"] is not None else \
            destination("topic", c["topic"], file)
        self.dead_letter = destination("queue", c["dead_letter_queue"], file)
        limit = runtime.thread_count()
        if not 1 <= c["concurrency"] <= limit:
            raise ConfigError(f"{file}: concurrency must be 1 to {limit} (the cage's thread_count)")
        if c["topic"] is not None and c["concurrency"] != 1:
            raise ConfigError(f"{file}: a durable subscription has one consumer: concurrency must be 1")
        if c["max_redeliveries"] < 0 or c["redelivery_delay"] < 0 or c["duplicate_window"] <= 0:
            raise ConfigError(f"{file}: max_redeliveries and redelivery_delay must not be negative, "
                              f"duplicate_window must be positive")
        self._stopping = threading.Event()
        self._link: Link | None = None
        self._link_lost = threading.Event()
        self._slots: list[_Slot] = []
        self._running: dict[str, _Run] = {}  # message id -> set when its handler has returned
        self._running_lock = threading.Lock()
        self._maintainer: threading.Thread | None = None
        self._outage = interfaces.Outage(name)
        # handled and acknowledged, not yet written to the state (the maintainer does, every MARK_PERIOD)
        self._acked: dict[str, None] = {}
        self._acked_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.received = Received(self.runtime.state, f"jms:{self.name}", self.config["duplicate_window"])
        self._slots = [_Slot(self, i) for i in range(self.config["concurrency"])]
        for slot in self._slots:
            slot.thread.start()
        self._maintainer = threading.Thread(target=self._maintain, name=f"jms:{self.name}", daemon=True)
        self._maintainer.start()
        log.message(f"interface {self.name} takes messages from {self.destination} at "
                    f"{self.config['server_address'][0]}:{self.config['server_address'][1]}, "
                    f"{self.config['concurrency']} at a time")

    def cease(self) -> None:
        """No new messages: a message delivered from now on is left unacknowledged, and goes
        back to the broker when the connection closes at stop, after the ones in process."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        for slot in self._slots:
            slot.frames.put(None)
        # the slots end first: a message whose request has just ended (the cage drained it) is
        # marked handled and acknowledged before the connection closes, not left on the queue
        until = time.monotonic() + 5.0
        for slot in self._slots:
            slot.thread.join(max(until - time.monotonic(), 0.0))
        self._link_lost.set()
        if self._maintainer is not None:  # it may be connecting: then its link is the one to close
            self._maintainer.join(self.config["connect_timeout"] + 1.0)
        link, self._link = self._link, None
        if link is not None:
            link.close()
        self._write_marks()

    # --- the connection --------------------------------------------------------------------

    def _maintain(self) -> None:
        """Keep the connection: connect, subscribe, wait until lost, reconnect with back-off."""
        delay = RECONNECT_FIRST
        swept = 0.0
        while not self._stopping.is_set():
            try:
                link = self._connect()
            except BrokerError as e:
                self._outage.begins(str(e), answered=e.answered)
                self._stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_FIRST
            if not self._outage.ends("the broker can be reached again, messages are taken"):
                log.info(f"interface {self.name}: connected to the broker, subscribed to {self.destination}")
            while not self._stopping.is_set() and link.alive:
                if time.monotonic() - swept >= SWEEP_PERIOD:
                    swept = time.monotonic()
                    self._sweep()
                self._link_lost.wait(MARK_PERIOD)
                self._write_marks()
            if self._stopping.is_set():
                return  # stop() closes the link, once the slots have acknowledged what they finished
            self._outage.begins(f"the connection to the broker at {link.where} was lost")
            link.close()

    def _connect(self) -> Link:
        c = self.config
        client_id = f"pmnc.{self.runtime.node}.{self.runtime.name}.{self.name}" if c["durable_subscription"] else None
        self._write_marks()  # what the last connection acknowledged may come again on this one
        link = Link(c, on_message=self._arrived, on_lost=lambda _: self._link_lost.set(), client_id=client_id)
        link.open(c["connect_timeout"])
        self._link_lost.clear()
        self._link = link
        for slot in self._slots:
            slot.subscribe(link)
        if not link.alive:
            raise BrokerError(f"broker at {link.where} closed the connection: {link.take_error() or 'no reason'}")
        return link

    def _sweep(self) -> None:
        try:
            self.received.forget_old()
        except Exception as e:
            log.warning(f"interface {self.name}: old message ids could not be dropped: {exc_string(e, stack=False)}")

    def _arrived(self, link: Link, frame: Any) -> None:
        """On stomp.py's reading thread: hand the frame to its subscription's slot."""
        subscription = frame.headers.get("subscription", "")
        for slot in self._slots:
            if slot.subscription == subscription:
                slot.frames.put((link, frame))
                return
        log.warning(f"interface {self.name}: a message for unknown subscription {subscription!r} is left alone")

    # --- one message -----------------------------------------------------------------------

    def process(self, link: Link, frame: Any) -> bool:
        """Handle one delivered message; True if it is done with (acknowledged or dead-lettered),
        False if the broker is to deliver it again."""
        headers = frame.headers
        message_id = headers.get("message-id", "")
        ack = headers.get("ack", "")
        earlier = self._wait_for_earlier_run(message_id)
        if earlier is None:
            return False
        entry = self._lookup(message_id)
        if earlier or (entry is not None and entry.handled):
            log.info(f"JMS message {message_id} was handled before, acknowledged without running the handler again")
            return self._ack(link, ack)
        if entry is not None and entry.failures > self.config["max_redeliveries"]:
            return self._dead_letter(link, frame, entry.last_error, entry.failures)
        try:
            request_fields = self._request_fields(message_id, frame)
        except ValueError as e:  # it can never succeed: set aside at once
            return self._dead_letter(link, frame, str(e), 0)
        error, run = self._run(message_id, request_fields, headers)
        if error is None:
            # The ACK, then the mark: kept here and written with the others within MARK_PERIOD (one
            # write for many messages). A copy that comes meanwhile finds the mark here, or this
            # run still tracked. A cage killed after the ACK was sent loses no ACK (the kernel
            # delivers what was written); only with the broker failing too, within MARK_PERIOD,
            # could a copy run again.
            self._ack(link, ack)
            with self._acked_lock:
                self._acked[message_id] = None
        if run is not None:
            self._ended(run)
        if error is None:
            return True
        if error == "":  # not a failure of the message: it comes again, not counted
            return False
        failures = self._count_failure(message_id, error)
        if failures > self.config["max_redeliveries"]:
            return self._dead_letter(link, frame, error, failures)
        return False

    def _request_fields(self, message_id: str, frame: Any) -> dict[str, Any]:
        body: bytes = frame.body if isinstance(frame.body, bytes) else str(frame.body or "").encode()
        limit = self.config["max_message_size"]
        if len(body) > limit:
            raise ValueError(f"the message has {len(body)} bytes, more than the limit of {limit} (max_message_size)")
        fields: dict[str, Any] = {"message_id": message_id, "headers": jms_headers(frame.headers)}
        if "content-length" in frame.headers:  # a BytesMessage
            if not self.config["bytes_messages"]:
                raise ValueError(f"a bytes message where text was expected (set bytes_messages = True "
                                 f"in {interface_file(self.name)} to take them)")
            fields["message_text"], fields["message_bytes"] = None, body
        else:
            try:
                fields["message_text"] = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"the text message is not UTF-8: {e}") from None
        return fields

    def _run(self, message_id: str, fields: dict[str, Any], headers: dict[str, str]) -> tuple[str | None, _Run | None]:
        """The handler for one message: None if it succeeded, else why not; "" if that was not the
        message's fault (the cage is stopping; the deadline came before the handler started).
        With it the run, still tracked for copies of the message: the caller ends it."""
        correlation = headers.get("correlation-id")
        description = f"JMS message {message_id}" + (f", corr.id {correlation}" if correlation else "")
        lifecycle = self.runtime.lifecycle
        try:
            request = lifecycle.begin(interface=self.name, protocol=self.protocol, timeout=self.request_timeout,
                                      parameters={"auth_tokens": {}}, description=description)
        except IntakeClosedError:
            return "", None
        run = _Run(message_id)
        with self._running_lock:
            self._running[message_id] = run
        try:
            lifecycle.call(request, self._handle, run, fields)
        except IntakeClosedError:
            return "", run
        except RequestExpiredError as e:
            if not run.started:  # waited in the queue (the cage is busy): not counted against it
                log.warning(f"{description} was not processed: {e}; it comes again")
                return "", run
            log.warning(f"{description} processing failed: {e}")
            return f"the deadline: {e}", run
        except Exception as e:
            log.warning(f"{description} processing failed: {exc_string(e)}")
            return exc_string(e, stack=False), run
        return None, run

    def _handle(self, run: _Run, fields: dict[str, Any]) -> None:
        """On the worker: the handler, its run tracked for copies of the message that come meanwhile."""
        with self._running_lock:
            if run.dropped:
                return
            run.started = True
        succeeded = False
        try:
            self.runtime.lifecycle.handle(self.handler, "process_request", (fields, {}))
            succeeded = not _request.current().expired  # as the slot will judge it
        finally:
            with self._running_lock:
                run.returned, run.succeeded = True, succeeded
                if run.waited_out:  # the slot has given up on it (the deadline): the run is over now
                    self._forget_run(run)
            run.done.set()

    def _ended(self, run: _Run) -> None:
        """The slot is done waiting for `run`: forget it, unless its handler is still running late."""
        with self._running_lock:
            if run.started and not run.returned:
                run.waited_out = True  # _handle forgets it when the handler returns
                return
            run.dropped = True  # never started (expired in the queue): never will
            self._forget_run(run)
        run.done.set()

    def _forget_run(self, run: _Run) -> None:
        if self._running.get(run.message_id) is run:
            del self._running[run.message_id]

    def _wait_for_earlier_run(self, message_id: str) -> bool | None:
        """A copy of a message whose handler is still running (it ran past its deadline, or the
        connection was lost meanwhile) waits for that run to return: whether it succeeded (False
        if there was none), told by the run itself - its slot may not have marked it handled yet.
        None if it did not return within a request's time: the copy goes back."""
        with self._running_lock:
            earlier = self._running.get(message_id)
        if earlier is None:
            return False
        if not earlier.done.wait(self.request_timeout):
            return None
        return earlier.succeeded

    def _lookup(self, message_id: str) -> Entry | None:
        if message_id in self._acked:
            return HANDLED
        try:
            return self.received.lookup(message_id)
        except Exception as e:  # the state cannot be read: the handler runs, as without the window
            log.error(f"interface {self.name}: cannot tell whether {message_id} was handled before: "
                      f"{exc_string(e, stack=False)}")
            return None

    def _write_marks(self) -> None:
        """Write the ids handled and acknowledged since the last time, in one transaction."""
        with self._acked_lock:
            if not self._acked:
                return
            ids, self._acked = list(self._acked), {}
        try:
            self.received.mark_handled(ids)
        except Exception as e:
            with self._acked_lock:
                self._acked.update(dict.fromkeys(ids))  # kept for the next attempt
            log.error(f"interface {self.name}: {len(ids)} handled message(s) could not be recorded "
                      f"({exc_string(e, stack=False)}); copies delivered again after a restart would run again")

    def _count_failure(self, message_id: str, error: str) -> int:
        try:
            return self.received.failed(message_id, error[:MAX_ERROR_TEXT])
        except Exception as e:
            log.error(f"interface {self.name}: the failure of {message_id} could not be counted: "
                      f"{exc_string(e, stack=False)}")
            return 0

    def _ack(self, link: Link, ack: str) -> bool:
        try:
            link.stomp.ack(ack)
        except (stomp.exception.StompException, OSError) as e:
            log.info(f"interface {self.name}: an acknowledgement was not sent ({exc_string(e, stack=False)}); "
                     f"the copy the broker delivers again is acknowledged without running the handler")
        return True

    def _dead_letter(self, link: Link, frame: Any, error: str, failures: int) -> bool:
        """Move the message to the dead-letter queue with the error, and acknowledge it, in one
        STOMP transaction; logged once. False if it could not be done (it comes again)."""
        headers = {k: v for k, v in frame.headers.items() if k not in ("destination", "message-id", "ack",
                                                                        "subscription", "redelivered")}
        headers.update({DLQ_CAUSE: error[:MAX_ERROR_TEXT].replace("\n", " "), "original-destination":
                        frame.headers.get("destination", self.destination), "persistent": "true"})
        message_id = frame.headers.get("message-id", "")
        tx = f"dlq-{uuid.uuid4().hex}"
        try:
            link.stomp.begin(tx)
            link.stomp.send(self.dead_letter, frame.body, headers=dict(headers, transaction=tx))
            link.stomp.ack(frame.headers.get("ack", ""), transaction=tx)
            receipt = link.receipt()
            link.stomp.commit(tx, headers={"receipt": receipt})
            link.await_receipt(receipt, self.config["connect_timeout"], "the move to the dead-letter queue")
        except (ResourceError, stomp.exception.StompException, OSError) as e:
            log.warning(f"interface {self.name}: JMS message {message_id} could not be moved to "
                        f"{self.dead_letter} ({exc_string(e, stack=False)}), it will come again")
            return False
        after = f" after {failures} failures" if failures else ""
        log.error(f"interface {self.name}: JMS message {message_id} moved to the dead-letter queue "
                  f"{jms_name(self.dead_letter)}{after}: {error}")
        try:
            self.received.forget(message_id)
        except Exception:
            pass  # it ages out of the window
        return True

    def release_delay(self, message_id: str) -> float:
        """Seconds before a failed message is given back: redelivery_delay, doubling per failure."""
        try:
            entry = self.received.lookup(message_id)
        except Exception:
            entry = None
        failures = entry.failures if entry is not None else 1
        base: float = self.config["redelivery_delay"]
        return float(min(base * 2 ** max(failures - 1, 0), max(base, 60.0)))


class _Run:
    """One run of a message's handler, seen by copies of the message that come meanwhile."""

    __slots__ = ("done", "dropped", "message_id", "returned", "started", "succeeded", "waited_out")

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.done = threading.Event()  # the run is over, however it ended
        self.started = self.returned = self.dropped = self.waited_out = self.succeeded = False


class _Slot:
    """One subscription with prefetch 1 and the thread that works through its messages."""

    def __init__(self, interface: Interface, index: int) -> None:
        self.interface = interface
        self.subscription = f"{interface.name}-{index + 1}"
        self.frames: queue.SimpleQueue[tuple[Link, Any] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=f"jms:{interface.name}:{index + 1}", daemon=True)

    def subscribe(self, link: Link) -> None:
        c = self.interface.config
        headers = {"activemq.prefetchSize": "1"}
        if c["durable_subscription"]:
            headers["activemq.subscriptionName"] = str(c["durable_subscription"])
        try:
            link.stomp.subscribe(self.interface.destination, id=self.subscription, ack="client-individual",
                                headers=headers)
        except (stomp.exception.StompException, OSError):
            pass  # the link is lost: the maintainer makes a new one

    def unsubscribe(self, link: Link) -> None:
        try:
            link.stomp.unsubscribe(id=self.subscription)
        except (stomp.exception.StompException, OSError):
            pass

    def _serve(self) -> None:
        interface = self.interface
        while True:
            item = self.frames.get()
            if item is None or interface._stopping.is_set():
                if item is None:
                    return
                continue  # stopping: left unacknowledged, the broker keeps it
            link, frame = item
            if not link.alive:
                continue  # delivered on a connection since lost: the broker delivers it again
            try:
                done = interface.process(link, frame)
            except Exception as e:  # a bug of ours: the message stays with the broker
                log.error(f"interface {interface.name}: {exc_string(e)}")
                done = False
            if not done and link.alive and not interface._stopping.is_set():
                self._give_back(link, frame.headers.get("message-id", ""))

    def _give_back(self, link: Link, message_id: str) -> None:
        """Drop the subscription and make it again after the delay: the broker then delivers the
        unacknowledged message again (to whichever subscription is free)."""
        delay = self.interface.release_delay(message_id)
        self.unsubscribe(link)
        if self.interface._stopping.wait(delay):
            return
        if link.alive:
            self.subscribe(link)


# --- the resource ------------------------------------------------------------------------------


# the keys of config_resource_<name>.py (module level: a Resource attribute could be called as a method)
RESOURCE_KEYS_JMS = (RESOURCE_KEYS | CONNECTION_KEYS).extend(queue=Key(None), topic=Key(None),
                                         persistent=Key(True, bool))


class Resource(resource.Resource):
    """One STOMP connection; `send` sends inside a STOMP transaction committed with the
    pmnc transaction (see the module)."""

    transactional = True
    inline = True  # connect, login, commit and rollback all wait within the deadline

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        file = resource_file(name)
        super().__init__(name, RESOURCE_KEYS_JMS.read(config, file))
        c = self.config
        if c["server_address"] is None:
            raise ConfigError(f"{file}: server_address must be (host, port) of the broker's STOMP connector")
        if c["queue"] is not None and c["topic"] is not None:
            raise ConfigError(f"{file}: give queue or topic, not both")
        self._destination: str | None = None
        if c["queue"] is not None:
            self._destination = destination("queue", c["queue"], file)
        elif c["topic"] is not None:
            self._destination = destination("topic", c["topic"], file)
        self._link: Link | None = None
        self._tx: str | None = None
        self._sent: list[str] = []

    @property
    def expired(self) -> bool:
        return super().expired or self._link is None or not self._link.alive

    def connect(self) -> None:
        timeout = min(self.config["connect_timeout"], _request.current().remain)
        if timeout <= 0:
            raise ResourceError("no time left to connect to the broker", recoverable=True)
        self._link = Link(self.config)
        try:
            self._link.open(timeout)
        except BrokerError as e:
            self._link = None
            raise ResourceError(str(e), recoverable=True) from None

    def disconnect(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        self._tx, self._sent = None, []

    def send(self, message_text: str | bytes, **headers: Any) -> str:
        """Send a message (str: a TextMessage; bytes: a BytesMessage) when the transaction
        commits; its id (also in the `pmnc_message_id` property). `JMSDestination` names
        another queue than the configured one."""
        body, extra = message_body(message_text, self.config["max_message_size"])
        target = headers.pop("JMSDestination", None)
        where = _destination_argument(str(target), "JMSDestination") if target else self._destination
        if where is None:
            raise ResourceInputParameterError(f"{resource_file(self.name)} names no queue: give JMSDestination")
        frame_headers = stomp_headers(headers, persistent=self.config["persistent"])
        message_id = f"ID:pmnc-{uuid.uuid4()}"
        frame_headers.update(extra, **{PMNC_MESSAGE_ID: message_id})
        link = self._live_link()
        link.bound_sends(_request.current().remain)
        try:
            if self._tx is None:
                tx = f"pmnc-{uuid.uuid4().hex}"
                link.stomp.begin(tx)
                self._tx = tx
            link.stomp.send(where, body, headers=dict(frame_headers, transaction=self._tx))
        except (stomp.exception.StompException, OSError) as e:
            raise ResourceError(f"sending to {link.where} failed: {exc_string(e, stack=False)}",
                                recoverable=True, terminal=True) from None
        self._sent.append(message_id)
        log.info(f"JMS message {message_id} with {len(body)} content byte(s) to {jms_name(where)}, "
                 f"sent when the transaction commits")
        return message_id

    def commit(self) -> None:
        if self._tx is None:
            return
        link, tx, self._tx = self._live_link(), self._tx, None
        error = link.take_error()
        if error is not None:  # the broker refused a SEND meanwhile (a bad destination, no permission)
            self._abort(link, tx)
            raise ResourceError(f"the broker refused a message: {error}", recoverable=True)
        receipt = link.receipt()
        link.bound_sends(_request.current().remain)
        try:
            link.stomp.commit(tx, headers={"receipt": receipt})
        except (stomp.exception.StompException, OSError) as e:
            raise ResourceError(f"COMMIT to {link.where} failed: {exc_string(e, stack=False)}",
                                recoverable=True) from None
        link.await_receipt(receipt, _request.current().remain, "the commit")
        log.info(f"JMS message(s) {', '.join(self._sent)} committed")

    def rollback(self) -> None:
        if self._tx is None or self._link is None:
            return
        tx, self._tx = self._tx, None
        self._abort(self._link, tx)

    def _abort(self, link: Link, tx: str) -> None:
        """ABORT: the broker drops what was sent in `tx`; it also does when the connection goes."""
        try:
            link.stomp.abort(tx)
        except (stomp.exception.StompException, OSError):
            pass  # a lost connection aborts the transaction all the same

    def _live_link(self) -> Link:
        if self._link is None or not self._link.alive:
            raise ResourceError("the connection to the broker has been lost", recoverable=self._tx is None)
        return self._link
