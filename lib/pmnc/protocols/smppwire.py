"""One ESME session to an SMSC (SMPP 3.4): connect and bind within a time, PDUs pipelined
through a window and matched to their responses, enquire_link both ways, unbind.

smpplib builds and parses every PDU and binds; this module wraps its `Client` where it
falls short of a session a cage can share between threads:

- smpplib reads on the caller's thread and matches nothing: a response goes to a handler
  by command. Here one reader thread reads every PDU, and a response settles the request
  of its sequence number (`Pending`), whoever sent it.
- smpplib has no window and no deadline: here at most `window` requests are outstanding,
  a sender waits for room within its deadline, and a request unanswered by its expiry is
  settled with an error (its window slot freed), so nothing waits past its deadline.
- smpplib's reader trusts the length a peer sends (a 4 GB length is a 4 GB read), and an
  unknown command id raises out of the reader, ending the session. Here a length over
  `max_pdu_size` ends the session (framing cannot be trusted after it), and an unknown
  or unparseable request is answered with generic_nack, as SMPP asks: the session lives on.
- Sends are serialised by a lock and bounded by `response_timeout` (SO_SNDTIMEO): an
  SMSC that stops reading ends the session instead of blocking every sender.

Incoming requests other than enquire_link and unbind (deliver_sm, data_sm, query_sm, ...)
go to `on_request(session, pdu)` on the reader thread, which must not block; the answer
goes back later with `reply`, on this session only (sequence numbers are per session).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.ptypes

from pmnc import log
from pmnc.errors import ProtocolError, exc_string
from pmnc.protocols.smpppdu import make_command, parse_command, status_text, submit_sm_bytes

__all__ = ["BIND_COMMANDS", "GENERIC_NACK", "MAX_PDU_SIZE", "Pending", "Session", "SmppError"]

BIND_COMMANDS = {"xmit": "bind_transmitter", "rcvr": "bind_receiver", "xcvr": "bind_transceiver"}
MAX_PDU_SIZE = 65536  # bytes: a longer PDU from the SMSC ends the session (the original's limit)
TICK = 0.05  # seconds between the keeper's looks at expired requests and pings
GENERIC_NACK = 0x80000000
ESME_ROK, ESME_RINVCMDLEN, ESME_RINVCMDID = 0x00, 0x02, 0x03

# smpplib logs each connect and disconnect at INFO, and warns of things this module handles
logging.getLogger("pmnc.smpplib").setLevel(logging.ERROR)


class SmppError(ProtocolError):
    """The SMSC refused, did not answer in time, or the session was lost.

    `status`: the SMSC's command status when it answered with one; `answered`: the SMSC
    answered (a refusal), as opposed to not being reached; `sent`: the request had been
    written to the SMSC, which may have acted on it."""

    def __init__(self, text: str, *, status: int | None = None, answered: bool = False, sent: bool = False) -> None:
        if sent and not answered:  # the user must know not to assume it was lost (test_smpp_faults)
            text += " (it had been sent: the SMSC may have it)"
        super().__init__(text)
        self.status, self.answered, self.sent = status, answered, sent


class _Sequence(smpplib.client.SimpleSequenceGenerator):  # type: ignore[misc]
    """smpplib's sequence numbers (1 ... 0x7FFFFFFF), safe for the threads that share a session."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def next_sequence(self) -> int:
        with self._lock:
            return int(super().next_sequence())


class _Unparsed:
    """A PDU smpplib could not parse (an unknown command id, a broken body): its header and why."""

    command = "an unparseable PDU"

    def __init__(self, raw: bytes, reason: str, nack_status: int) -> None:
        self.length, self.command_id, self.status, self.sequence = struct.unpack(">LLLL", raw[:16])
        self.reason, self.nack_status = reason, nack_status

    def is_error(self) -> bool:  # as smpplib's bind asks of its answer
        return True

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & 0x80000000)


class _Answer:
    """The answers the session waits for most (submit_sm_resp, generic_nack, enquire_link_resp),
    read straight from the bytes: smpplib's command objects cost more than the rest of a submit.
    Anything else, or anything odd about these, goes to smpplib (parse_command)."""

    __slots__ = ("command", "message_id", "sequence", "status")

    COMMANDS = {0x80000004: "submit_sm_resp", GENERIC_NACK: "generic_nack", 0x80000015: "enquire_link_resp"}

    def __init__(self, command: str, status: int, sequence: int, message_id: bytes | None) -> None:
        self.command, self.status, self.sequence, self.message_id = command, status, sequence, message_id

    @classmethod
    def of(cls, raw: bytes) -> _Answer | None:
        _, command_id, status, sequence = struct.unpack_from(">LLLL", raw)
        command = cls.COMMANDS.get(command_id)
        if command is None:
            return None
        body = raw[16:]
        if command != "submit_sm_resp":
            return cls(command, status, sequence, None) if not body else None
        end = body.find(b"\0")
        if end < 0:
            return cls(command, status, sequence, b"") if not body and status else None
        return cls(command, status, sequence, body[:end]) if end == len(body) - 1 else None

    def is_response(self) -> bool:
        return True

    def is_error(self) -> bool:
        return self.status != ESME_ROK


class _Client(smpplib.client.Client):  # type: ignore[misc]
    """smpplib's client, its reader bounded by `max_pdu_size` and surviving unknown PDUs."""

    max_pdu_size = MAX_PDU_SIZE

    _buffer = b""  # read from the socket, not yet taken: one recv brings many PDUs when they queue up

    def _recv_exact(self, exact_size: int) -> bytes:
        while len(self._buffer) < exact_size:
            try:
                part = self._socket.recv(max(65536, exact_size - len(self._buffer)))
            except TimeoutError:
                raise  # smpplib's bind takes it as no answer; what came so far stays in the buffer
            except OSError as e:
                raise smpplib.exceptions.ConnectionError() from e
            if not part:
                raise smpplib.exceptions.ConnectionError()
            self._buffer += part
        data, self._buffer = self._buffer[:exact_size], self._buffer[exact_size:]
        return data

    def read_pdu(self) -> Any:
        header = self._recv_exact(4)
        length = struct.unpack(">L", header)[0]
        if not 16 <= length <= self.max_pdu_size:
            raise SmppError(f"the SMSC sent a PDU of {length} bytes, SMPP PDUs here are 16 to {self.max_pdu_size}")
        raw = header + self._recv_exact(length - 4)
        answer = _Answer.of(raw)
        if answer is not None:
            return answer
        try:
            pdu = parse_command(raw, client=self, allow_unknown_opt_params=True)
        except smpplib.exceptions.UnknownCommandError as e:
            return _Unparsed(raw, str(e), ESME_RINVCMDID)
        except Exception as e:  # a body that cannot be parsed (too short, a bad TLV): the header is enough
            return _Unparsed(raw, f"a malformed PDU: {exc_string(e, stack=False)}", ESME_RINVCMDLEN)
        missing = None if pdu.is_response() else _cut_short(pdu)
        if missing is not None:
            return _Unparsed(raw, f"a malformed PDU: {pdu.command} ends before its {missing}", ESME_RINVCMDLEN)
        return pdu


def _cut_short(pdu: Any) -> str | None:
    """The first mandatory field a request's body ends before, or None. smpplib stops reading
    quietly where a body ends, leaving the fields after it None: a deliver_sm cut short would
    reach the handler with no addresses (test_smpp_faults). short_message may be absent (sm_length 0)."""
    for field in pdu.params_order:
        if pdu.field_is_optional(field):
            return None
        if getattr(pdu, field, None) is None and pdu.params[field].type is not smpplib.ptypes.ostr:
            return str(field)
    return None


class Pending:
    """A request sent (or about to be), settled once: by its response, by its expiry, or by
    the session ending. `wait` gives the response."""

    __slots__ = ("_done", "command", "error", "expires", "response", "sent", "sequence")

    def __init__(self, command: str, sequence: int, expires: float) -> None:
        self.command, self.sequence, self.expires = command, sequence, expires
        self.response: Any = None
        self.error: SmppError | None = None
        self.sent = False
        self._done = threading.Event()

    @property
    def settled(self) -> bool:
        return self._done.is_set()

    def wait(self, deadline: float) -> Any:
        """The response (any status: the caller judges it), or SmppError: no answer before
        `deadline` (time.monotonic()), or the session ended first."""
        if not self._done.wait(max(deadline - time.monotonic(), 0.0)):
            raise SmppError(f"the SMSC did not answer {self.command} #{self.sequence} in time", sent=self.sent)
        if self.error is not None:
            raise self.error
        return self.response


class Session:
    """One bound ESME session; see the module. Made by `open`, ended by `close` or loss."""

    def __init__(self, address: tuple[str, int], *, name: str, response_timeout: float, window: int = 10,
                 ping_interval: float | None = None, max_pdu_size: int = MAX_PDU_SIZE,
                 on_request: Callable[[Session, Any], None] | None = None,
                 on_lost: Callable[[Session, str], None] | None = None) -> None:
        self.address, self.name = address, name
        self.where = f"smpp://{address[0]}:{address[1]}"
        self.response_timeout, self.ping_interval = response_timeout, ping_interval
        self.on_request, self.on_lost = on_request, on_lost
        self.bind_type = ""
        self.system_id = ""  # the SMSC's, from the bind response
        self._client = _Client(address[0], address[1], timeout=response_timeout, allow_unknown_opt_params=True,
                               sequence_generator=_Sequence(), logger_name="pmnc.smpplib")
        self._client.max_pdu_size = max_pdu_size
        self._window = threading.BoundedSemaphore(window)
        self.window = window
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()  # guards _pending and _lost
        self._write_lock = threading.Lock()  # guards _outbox and _writing (see _write)
        self._outbox: list[bytes] = []
        self._writing = False
        self._lost: str | None = None
        self._stopping = threading.Event()
        self._last_ping = time.monotonic()
        self._threads: list[threading.Thread] = []

    # --- open and close ------------------------------------------------------------------

    def open(self, bind_type: str, timeout: float, **bind_fields: Any) -> None:
        """Connect and bind as `bind_type` (xmit, rcvr, xcvr) within `timeout` seconds; SmppError
        if the SMSC cannot be reached or refuses (answered=True, with its status)."""
        until = time.monotonic() + timeout
        try:
            sock = socket.create_connection(self.address, timeout=timeout)
        except OSError as e:
            raise SmppError(f"the SMSC at {self.where} cannot be reached: {exc_string(e, stack=False)}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client._socket = sock
        self._client.state = smpplib.consts.SMPP_CLIENT_STATE_OPEN
        try:
            self._bind(bind_type, until, bind_fields)
        except BaseException:
            self._close_socket()
            raise
        self.bind_type = bind_type
        self._bound_sends()
        for target, role in ((self._read, "reader"), (self._keep, "keeper")):
            thread = threading.Thread(target=target, name=f"smpp:{self.name}:{role}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _bind(self, bind_type: str, until: float, fields: dict[str, Any]) -> None:
        self._client._socket.settimeout(max(until - time.monotonic(), 0.001))
        try:
            response = self._client._bind(BIND_COMMANDS[bind_type], **fields)
        except smpplib.exceptions.PDUError as e:
            status = e.args[1] if len(e.args) > 1 and e.args[1] else None
            text = status_text(status) if status is not None else "something other than a bind response"
            raise SmppError(f"the SMSC at {self.where} refused to bind as {BIND_COMMANDS[bind_type]}: {text}",
                            status=status, answered=True) from None
        except (smpplib.exceptions.ConnectionError, OSError) as e:
            raise SmppError(f"the SMSC at {self.where} did not answer the bind within the connect_timeout "
                            f"({exc_string(e, stack=False)})") from None
        except SmppError:
            raise
        if isinstance(response, _Unparsed) or not response.command.startswith("bind_"):
            raise SmppError(f"the SMSC at {self.where} answered the bind with something else", answered=True)
        system_id = response.system_id
        self.system_id = system_id.decode("latin-1") if isinstance(system_id, bytes) else str(system_id or "")

    def _bound_sends(self) -> None:
        """Reads block (the reader thread waits for PDUs); writes give up after response_timeout."""
        sock = self._client._socket
        sock.settimeout(None)
        seconds = int(self.response_timeout)
        micros = int((self.response_timeout - seconds) * 1e6)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros))

    @property
    def lost_reason(self) -> str | None:
        """Why the session ended, once it has."""
        return self._lost

    @property
    def alive(self) -> bool:
        return self._lost is None and not self._stopping.is_set()

    def close(self) -> None:
        """Unbind (waiting up to response_timeout for the answer), then close."""
        if self._lost is None and not self._stopping.is_set():
            try:
                pending = self.send("unbind", {}, expires=time.monotonic() + self.response_timeout)
                pending.wait(pending.expires)
            except SmppError:
                pass  # going anyway
        self._stopping.set()
        self._lose("the session was closed", report=False)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(self.response_timeout + 1.0)

    def _close_socket(self) -> None:
        sock = self._client._socket
        self._client._socket = None
        self._client.state = smpplib.consts.SMPP_CLIENT_STATE_CLOSED
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _lose(self, why: str, *, report: bool = True) -> None:
        """The session is over: every request still waiting is settled with `why`."""
        with self._lock:
            if self._lost is not None:
                return
            self._lost = why
            pending, self._pending = list(self._pending.values()), {}
        self._close_socket()
        for p in pending:
            self._settle(p, error=SmppError(f"{why} before the SMSC answered {p.command} #{p.sequence}",
                                            sent=p.sent))
        if report and self.on_lost is not None and not self._stopping.is_set():
            self.on_lost(self, why)

    # --- requests out -----------------------------------------------------------------------

    def send(self, command: str, fields: dict[str, Any], *, expires: float) -> Pending:
        """Send a request within the window, to be answered by `expires` (time.monotonic());
        SmppError if there is no room in the window by then, or the session is gone."""
        if not self._window.acquire(timeout=max(expires - time.monotonic(), 0.0)):
            raise SmppError(f"no room in the window of {self.window} outstanding PDUs to {self.where} in time")
        try:
            if command == "submit_sm":  # the hot path: encoded in one pass (same bytes as smpplib's)
                sequence = self._client.next_sequence()
                pdu: Any = submit_sm_bytes(sequence, fields)
            else:
                pdu = make_command(command, client=self._client, **fields)
                sequence = pdu.sequence
        except BaseException:
            self._window.release()
            raise
        pending = Pending(command, sequence, expires)
        with self._lock:
            if self._lost is not None:
                self._window.release()
                raise SmppError(f"the session to {self.where} is down ({self._lost}): {command} was not sent")
            self._pending[pending.sequence] = pending
        pending.sent = True  # from here on the SMSC may have it, even if the write fails halfway
        self._write(pdu)
        return pending

    def reply(self, pdu: Any) -> bool:
        """Send a response PDU (smpplib's, or raw bytes); False if the session is gone."""
        if self._lost is not None:
            return False
        self._write(pdu)
        return self._lost is None

    def _write(self, pdu: Any) -> None:
        """Queue the bytes; the thread that finds nobody writing writes everything queued, in one
        sendall, until the queue is empty. Threads submitting at once then never wait for each
        other's syscalls (a lock held over sendall made them queue up, each waking the next),
        and what they sent meanwhile goes out together."""
        data = pdu if isinstance(pdu, bytes) else pdu.generate()
        with self._write_lock:
            self._outbox.append(data)
            if self._writing:
                return  # the writer takes it with what it sends next
            self._writing = True
        while True:
            with self._write_lock:
                if not self._outbox or self._client._socket is None:
                    self._outbox.clear()
                    self._writing = False
                    return
                chunk = self._outbox[0] if len(self._outbox) == 1 else b"".join(self._outbox)
                self._outbox.clear()
                sock = self._client._socket
            try:
                sock.sendall(chunk)
            except OSError as e:
                why = "the SMSC stopped reading" if isinstance(e, (BlockingIOError, TimeoutError)) else \
                    f"writing to the SMSC failed: {exc_string(e, stack=False)}"
                self._lose(why)

    def _settle(self, pending: Pending, *, response: Any = None, error: SmppError | None = None) -> None:
        if pending.settled:
            return
        pending.response, pending.error = response, error
        pending._done.set()
        self._window.release()

    # --- the reader -------------------------------------------------------------------------

    def _read(self) -> None:
        while self.alive:
            try:
                pdu = self._client.read_pdu()
            except SmppError as e:
                self._lose(str(e))
                return
            except (smpplib.exceptions.ConnectionError, OSError, AttributeError):
                self._lose(f"the SMSC at {self.where} closed the connection")
                return
            try:
                self._dispatch(pdu)
            except Exception as e:  # our bug, not the SMSC's: say so, keep the session
                log.error(f"interface {self.name}: a PDU from the SMSC could not be handled: {exc_string(e)}")

    def _dispatch(self, pdu: Any) -> None:
        if isinstance(pdu, _Unparsed):
            self._unparsed(pdu)
        elif pdu.command == "generic_nack" or pdu.command.endswith("_resp"):
            self._response(pdu)
        elif pdu.command == "enquire_link":
            self.reply(self._response_to(pdu, "enquire_link_resp"))
        elif pdu.command == "unbind":
            self.reply(self._response_to(pdu, "unbind_resp"))
            self._lose(f"the SMSC at {self.where} unbound the session")
        elif pdu.command in ("outbind", "alert_notification"):
            log.info(f"interface {self.name}: {pdu.command} from the SMSC is not acted on")
        elif self.on_request is not None:
            self.on_request(self, pdu)
        else:
            self.reply(self.nack(pdu.sequence, ESME_RINVCMDID))

    def _response_to(self, pdu: Any, command: str) -> Any:
        return make_command(command, client=self._client, sequence=pdu.sequence)

    def nack(self, sequence: int, status: int) -> bytes:
        """generic_nack with `status` for request `sequence`."""
        return struct.pack(">LLLL", 16, GENERIC_NACK, status, sequence)

    def _response(self, pdu: Any) -> None:
        with self._lock:
            pending = self._pending.pop(pdu.sequence, None)
        if pending is None:
            log.debug(f"interface {self.name}: {pdu.command} #{pdu.sequence} answers no request waiting (late)")
            return
        if pdu.command == "generic_nack":
            self._settle(pending, error=SmppError(
                f"the SMSC answered {pending.command} #{pending.sequence} with generic_nack "
                f"{status_text(pdu.status)}", status=pdu.status, answered=True, sent=True))
        else:
            self._settle(pending, response=pdu)

    def _unparsed(self, pdu: _Unparsed) -> None:
        if pdu.is_response:
            with self._lock:
                pending = self._pending.pop(pdu.sequence, None)
            if pending is not None:
                self._settle(pending, error=SmppError(
                    f"the SMSC's answer to {pending.command} #{pending.sequence} is {pdu.reason}",
                    status=pdu.status, answered=True, sent=True))
            return
        status = pdu.nack_status
        log.warning(f"interface {self.name}: the SMSC sent command id 0x{pdu.command_id:08x} "
                    f"#{pdu.sequence}: {pdu.reason}; answered with generic_nack {status_text(status)}")
        self.reply(self.nack(pdu.sequence, status))

    # --- the keeper: expiries and pings ------------------------------------------------------

    def _keep(self) -> None:
        ping: Pending | None = None
        while not self._stopping.wait(TICK) and self._lost is None:
            now = time.monotonic()
            self._expire(now)
            if ping is not None and ping.settled:
                if ping.error is not None and ping.error.status is None:
                    self._lose(f"the SMSC at {self.where} did not answer enquire_link within the "
                               f"response_timeout ({self.response_timeout:g}s)")
                    return
                ping = None
            if ping is None and self.ping_interval and now - self._last_ping >= self.ping_interval:
                self._last_ping = now
                try:
                    ping = self.send("enquire_link", {}, expires=now + self.response_timeout)
                except SmppError:
                    ping = None  # the window is full: the session is busy, and so alive

    def _expire(self, now: float) -> None:
        with self._lock:
            late = [p for p in self._pending.values() if p.expires <= now]
            for p in late:
                del self._pending[p.sequence]
        for p in late:
            self._settle(p, error=SmppError(f"the SMSC did not answer {p.command} #{p.sequence} in time",
                                            sent=p.sent))
