"""SMPP 3.4: the interface is an ESME holding one bound session to an SMSC, each deliver_sm or
data_sm a request; the resource submits short messages through that interface's session.

What the user sees is the original's: `config_interface_<n>.py` names `server_address`,
`connect_timeout`, `response_timeout`, `ping_interval`, `system_id`, `password`,
`system_type`, `esme_ton`, `esme_npi`, `esme_addr` and `esme_type` ("rcvr", "xmit" or
"xcvr"); `interface_<n>.process_request(request, response)` gets `request["pdu"]`, a PDU of
the original's classes (`smpp34.smpp_pdus`), and answers by putting a response PDU into
`response["pdu"]` (a generic_nack ESME_RUNKNOWNERR until it does, as in the original:
`response["pdu"] = request["pdu"].create_response(message_id=b"")`). Beyond the original,
the request carries the message taken apart: `text` (decoded by data_coding: GSM 03.38 with
its extension table, IA5, Latin-1, UCS-2; None for binary), `data_coding`, `source_addr`,
`destination_addr`, `udh`, `tlvs` (every optional parameter present), `receipt` (a delivery
receipt's fields, parsed) and `parts` (the PDUs of a concatenated message).

The interface (smppwire.Session does the wire):

    a maintainer thread: connect + bind within connect_timeout → bound; an enquire_link every
    ping_interval, one unanswered within response_timeout ends the session; a dropped
    connection or an unbind from the SMSC ends it too → bind again with back-off (one log
    line when the outage begins, one when it ends)
    the session's reader thread: enquire_link answered at once; every other request →
        a part of a concatenated message (UDH 8/16-bit reference, or SAR TLVs)?
            not the last one missing → kept, answered at once (ESME_ROK)
            the last one → the whole message is one request (parts never completed are
            dropped after parts_timeout, logged)
        → lifecycle.submit: the handler runs on a worker, in parallel with the others
        → answered only after the handler: response["pdu"]; generic_nack ESME_RSYSERR if it
          raised; nothing at all if the request expired (the SMSC delivers it again)

The resource (`xa.<n>.submit_sm(...)`) sends through interface <n>'s session, which must be
bound as xmit or xcvr; see `Resource.submit_sm`.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log, resource
from pmnc import request as _request
from pmnc.errors import ConfigError, IntakeClosedError, RequestExpiredError, ResourceError, exc_string
from pmnc.lifecycle import Outcome
from pmnc.protocols import smpppdu, smpptext
from pmnc.protocols.smpppdu import status_text
from pmnc.protocols.smppwire import BIND_COMMANDS, GENERIC_NACK, MAX_PDU_SIZE, Pending, Session, SmppError
from pmnc.schema import RESOURCE_KEYS, Key, address, interface_file, resource_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from pmnc.runtime import Runtime

__all__ = ["Interface", "Resource"]

RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0  # seconds between attempts to bind again
SWEEP_PERIOD = 1.0  # seconds between looks for concatenated messages that never completed
MESSAGE_COMMANDS = frozenset({"deliver_sm", "data_sm"})
ESME_RSYSERR, ESME_RUNKNOWNERR = 0x08, 0xFF
ESME_RTHROTTLED, ESME_RMSGQFUL = 0x58, 0x14  # "slow down": submitted again after a back-off
THROTTLE_FIRST, THROTTLE_MAX = 0.05, 1.0  # seconds of back-off after ESME_RTHROTTLED, doubling
MAX_SHORT_MESSAGE = 254  # octets in short_message; a longer unfragmented message goes as message_payload


def _esme_type(value: Any) -> str:
    if value not in BIND_COMMANDS:
        raise ValueError(f"must be one of {', '.join(map(repr, BIND_COMMANDS))}, not {value!r}")
    return str(value)


def _frag_method(value: Any) -> str | None:
    if value not in (None, "udh", "sar"):
        raise ValueError(f'must be None, "udh" or "sar", not {value!r}')
    return value  # type: ignore[no-any-return]


# --- the interface -----------------------------------------------------------------------------


class Interface(interfaces.Interface):
    """An ESME's bound session; each deliver_sm / data_sm (or other request) a request."""

    protocol = "smpp"

    keys = interfaces.Interface.keys.extend(
        server_address=Key(None, address),
        connect_timeout=Key(5.0, float),  # TCP connect and bind
        response_timeout=Key(3.0, float),  # an answer from the SMSC; a write to it
        ping_interval=Key(None, float),  # seconds between our enquire_link (None: we send none)
        system_id=Key("", str), password=Key("", str), system_type=Key("", str),
        esme_ton=Key(0, int), esme_npi=Key(0, int), esme_addr=Key("", str),
        esme_type=Key("xcvr", _esme_type),  # "rcvr", "xmit" or "xcvr"
        window=Key(10, int),  # requests to the SMSC outstanding at once (the resource's submits)
        parts_timeout=Key(300.0, float),  # seconds a concatenated message's parts wait for the rest
        max_pdu_size=Key(MAX_PDU_SIZE, int),  # bytes: a longer PDU from the SMSC ends the session
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        c, file = self.config, interface_file(name)
        if c["server_address"] is None:
            raise ConfigError(f"{file}: server_address must be (host, port) of the SMSC")
        if c["window"] < 1 or c["connect_timeout"] <= 0 or c["response_timeout"] <= 0 or c["parts_timeout"] <= 0:
            raise ConfigError(f"{file}: window must be at least 1; connect_timeout, response_timeout and "
                              f"parts_timeout must be positive")
        if c["ping_interval"] is not None and c["ping_interval"] <= 0:
            raise ConfigError(f"{file}: ping_interval must be positive, or None for no enquire_link of ours")
        self.session: Session | None = None
        self.ceased = False
        self._stopping = threading.Event()
        self._lost = threading.Event()
        self._bound = threading.Condition()
        self._maintainer: threading.Thread | None = None
        self._outage = interfaces.Outage(name)
        self.parts: smpptext.Reassembly[tuple[str, str, int], Message] = smpptext.Reassembly(c["parts_timeout"])
        self._parts_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._maintainer = threading.Thread(target=self._maintain, name=f"smpp:{self.name}", daemon=True)
        self._maintainer.start()
        host, port = self.config["server_address"]
        log.message(f"interface {self.name} binds to the SMSC at smpp://{host}:{port} as "
                    f"{BIND_COMMANDS[self.config['esme_type']]} ({self.config['system_id']!r})")

    def cease(self) -> None:
        """No new requests: a PDU arriving from now on goes unanswered (the SMSC delivers it
        again); the answers of the requests in flight still go out on the session."""
        self.ceased = True

    def stop(self) -> None:
        self.ceased = True
        self._stopping.set()
        self._lost.set()
        if self._maintainer is not None:
            self._maintainer.join(self.config["connect_timeout"] + 1.0)
        session, self.session = self.session, None
        if session is not None:
            session.close()

    # --- the session -------------------------------------------------------------------------

    def _maintain(self) -> None:
        delay = RECONNECT_FIRST
        while not self._stopping.is_set():
            self._lost.clear()
            try:
                session = self._bind()
            except SmppError as e:
                self._outage.begins(str(e), answered=e.answered)
                self._stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_FIRST
            if not self._outage.ends(f"bound to the SMSC again as {session.bind_type}"):
                log.message(f"interface {self.name}: bound to the SMSC at {session.where} ({session.system_id!r}) "
                            f"as {BIND_COMMANDS[session.bind_type]}")
            while not self._lost.wait(SWEEP_PERIOD) and not self._stopping.is_set():
                self._sweep_parts()
            if self._stopping.is_set():
                return  # stop() unbinds
            with self._bound:
                self.session = None
            self._outage.begins(session.lost_reason or "the session ended", meanwhile="binding again with back-off")
            session.close()

    def _bind(self) -> Session:
        """A new bound session, made `self.session`; SmppError if the SMSC cannot be reached or refuses."""
        c = self.config
        session = Session(c["server_address"], name=self.name, response_timeout=c["response_timeout"],
                          window=c["window"], ping_interval=c["ping_interval"], max_pdu_size=c["max_pdu_size"],
                          on_request=self._arrived, on_lost=lambda _, why: self._lost.set())
        session.open(c["esme_type"], c["connect_timeout"], system_id=c["system_id"], password=c["password"],
                     system_type=c["system_type"], addr_ton=c["esme_ton"], addr_npi=c["esme_npi"],
                     address_range=c["esme_addr"])
        with self._bound:
            self.session = session
            self._bound.notify_all()
        if not session.alive:  # lost between the bind and now: on_lost may have come before the clear
            self._lost.set()
        return session

    def bound_session(self, timeout: float) -> Session | None:
        """The bound session, waiting up to `timeout` for one (the resource's submits)."""
        until = time.monotonic() + timeout
        with self._bound:
            while self.session is None or not self.session.alive:
                left = until - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    return None
                self._bound.wait(min(left, 0.1))
            return self.session

    def _sweep_parts(self) -> None:
        with self._parts_lock:
            dropped = self.parts.expired()
        for key, reference, total, present in dropped:
            log.warning(f"interface {self.name}: a concatenated message from {key[0]!r} to {key[1]!r} "
                        f"(reference {reference}) had {present} of its {total} parts after "
                        f"{self.config['parts_timeout']:g}s (parts_timeout), the parts are dropped")

    # --- one PDU from the SMSC ---------------------------------------------------------------

    def _arrived(self, session: Session, pdu: Any) -> None:
        """On the session's reader thread: make the PDU a request (or keep it as a part); never block."""
        if self.ceased:
            return  # unanswered: the SMSC delivers it again, to this cage once it is back
        try:
            request = smpppdu.from_smpplib(pdu)
            message = Message.of(request) if pdu.command in MESSAGE_COMMANDS else None
        except Exception as e:
            log.warning(f"interface {self.name}: {pdu.command} #{pdu.sequence} from the SMSC cannot be taken: "
                        f"{exc_string(e, stack=False)}; answered with generic_nack ESME_RSYSERR")
            session.reply(session.nack(pdu.sequence, ESME_RSYSERR))
            return
        if message is not None and message.concatenation is not None:
            with self._parts_lock:
                parts = self.parts.add(message.key, message.concatenation, message)
            if parts is None:  # held here until the rest comes
                session.reply(request.create_response(message_id=b"").serialize())
                return
            message = message.joined(parts)
        self._submit(session, request, message)

    def _submit(self, session: Session, request: Any, message: Message | None) -> None:
        lifecycle = self.runtime.lifecycle
        fields = message.fields if message is not None else {"pdu": request}
        description = describe(request, fields)
        try:
            req = lifecycle.begin(interface=self.name, protocol=self.protocol, timeout=self.request_timeout,
                                  parameters={"auth_tokens": {"system_id": session.system_id}},
                                  description=description)
        except IntakeClosedError:
            return  # unanswered: delivered again
        response = {"pdu": request.create_nack(ESME_RUNKNOWNERR)}

        def when_done(outcome: Outcome) -> None:
            answer = self._answer(request, response, outcome, req.expired, description)
            if message is not None and message.concatenation is not None:
                self._keep_parts(message, handled=answer is not None and answer_ok(answer))
            if answer is not None and not session.reply(answer):
                log.warning(f"{description}: the session it came on has ended, the answer is dropped "
                            f"(the SMSC delivers it again)")

        lifecycle.submit(req, lifecycle.handle, self.handler, "process_request", (fields, response),
                         when_done=when_done)

    def _answer(self, request: Any, response: dict[str, Any], outcome: Outcome, expired: bool,
                description: str) -> bytes | None:
        """On the worker: the handler's answer, a generic_nack, or (expired) None: no answer at all."""
        try:
            outcome.value()
        except (RequestExpiredError, IntakeClosedError) as e:
            log.warning(f"{description} was not answered ({exc_string(e, stack=False)}): the SMSC delivers it again")
            return None
        except Exception as e:
            log.warning(f"{description} processing failed: {exc_string(e)}; answered with generic_nack "
                        f"ESME_RSYSERR")
            return bytes(request.create_nack(ESME_RSYSERR).serialize())
        if expired:
            log.warning(f"{description} was handled after its deadline: not answered, the SMSC delivers it again")
            return None
        return self._response_bytes(request, response, description)

    def _response_bytes(self, request: Any, response: dict[str, Any], description: str) -> bytes:
        pdu = response.get("pdu")
        try:
            if not isinstance(pdu, smpppdu.ResponsePDU):
                raise TypeError(f'response["pdu"] is {type(pdu).__name__}, not a response PDU')
            if pdu.sequence_number.value != request.sequence_number.value:
                raise ValueError(f'response["pdu"] has sequence number {pdu.sequence_number.value}, '
                                 f'the request {request.sequence_number.value}')
            return bytes(pdu.serialize())
        except Exception as e:
            log.warning(f"{description}: the handler's answer cannot be sent ({exc_string(e, stack=False)}); "
                        f"answered with generic_nack ESME_RSYSERR")
            return bytes(request.create_nack(ESME_RSYSERR).serialize())

    def _keep_parts(self, message: Message, *, handled: bool) -> None:
        """A concatenated message handled: its parts are forgotten; not handled: the part that
        completed it is forgotten (it comes again, and completes it again), the others kept."""
        assert message.concatenation is not None
        with self._parts_lock:
            if handled:
                self.parts.complete(message.key, message.concatenation)
            else:
                self.parts.discard_part(message.key, message.concatenation)


def answer_ok(answer: bytes) -> bool:
    """Whether a response PDU says ESME_ROK (and is not a generic_nack)."""
    command_id, status = struct.unpack(">LL", answer[4:12])
    return bool(status == 0 and command_id != GENERIC_NACK)


def describe(request: Any, fields: dict[str, Any]) -> str:
    """`deliver_sm #5 from '316999' to '3160001'`, for the log."""
    text = f"{request.command} #{request.sequence_number.value}"
    if "source_addr" in fields:
        text += f" from {fields['source_addr']!r} to {fields['destination_addr']!r}"
    return text


# --- a message PDU taken apart (no sockets here) ------------------------------------------------


def _text_field(pdu: Any, name: str) -> str:
    value = getattr(pdu, name, None)
    raw = value.value if value is not None else b""
    return raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)


def _int_field(pdu: Any, name: str) -> int:
    value = getattr(pdu, name, None)
    return int(value.value) if value is not None else 0


class Message:
    """A deliver_sm / data_sm taken apart: `fields` is the handler's `request`; a part of a
    concatenated message also has its `concatenation`, `key` (who to whom) and `body`."""

    def __init__(self, fields: dict[str, Any], body: bytes, concatenation: smpptext.Concatenation | None) -> None:
        self.fields, self.body, self.concatenation = fields, body, concatenation
        self.key = (fields["source_addr"], fields["destination_addr"], fields["data_coding"])

    @classmethod
    def of(cls, pdu: Any) -> Message:
        data_coding, esm_class = _int_field(pdu, "data_coding"), _int_field(pdu, "esm_class")
        short_message = getattr(pdu, "short_message", None)
        payload = getattr(pdu, "message_payload", None)
        body: bytes = payload.value if payload is not None else short_message.value if short_message is not None \
            else b""
        udh = None
        if esm_class & 0x40 and body:
            try:
                udh, body = smpptext.parse_udh(body)
            except ValueError as e:
                log.warning(f"{pdu.command} #{pdu.sequence_number.value}: {e}; the message is taken whole")
        tlvs = {name: value for name, value in pdu.fields.items() if name not in pdu.mandatory_parameters}
        sar = (tlvs.get("sar_msg_ref_num"), tlvs.get("sar_total_segments"), tlvs.get("sar_segment_seqnum"))
        text = smpptext.decode_text(body, data_coding)
        fields: dict[str, Any] = {
            "pdu": pdu, "text": text, "data_coding": data_coding, "esm_class": esm_class,
            "source_addr": _text_field(pdu, "source_addr"), "destination_addr": _text_field(pdu, "destination_addr"),
            "udh": udh, "tlvs": tlvs, "receipt": receipt(esm_class, text), "parts": [pdu],
        }
        return cls(fields, body, smpptext.concatenation(udh, sar if sar[0] is not None else None))

    def joined(self, parts: list[Message]) -> Message:
        """The whole message, this part having completed it: this part's PDU, the text of all."""
        fields = dict(self.fields)
        fields["parts"] = [part.fields["pdu"] for part in parts]
        fields["text"] = smpptext.join_parts([part.body for part in parts], fields["data_coding"])
        fields["receipt"] = receipt(fields["esm_class"], fields["text"])
        return Message(fields, b"".join(part.body for part in parts), self.concatenation)


def receipt(esm_class: int, text: str | None) -> dict[str, Any] | None:
    """A delivery receipt's fields (id, sub, dlvrd, submit_date, done_date, stat, err, text) when
    esm_class says the message is one (SMSC delivery receipt or intermediate notification)."""
    if esm_class & 0x3C not in (0x04, 0x20) or text is None:
        return None
    parsed = smpptext.parse_receipt(text)
    return None if parsed is None else dataclasses.asdict(parsed)


# --- the resource ----------------------------------------------------------------------------

RESOURCE_KEYS_SMPP = RESOURCE_KEYS.extend(
    source_addr_ton=Key(0, int), source_addr_npi=Key(0, int), source_addr=Key("", str),
    asynchronous=Key(False, bool),  # True: submit_sm returns without waiting for the SMSC's answers (None)
    pack_7bit=Key(False, bool),  # GSM 03.38 text packed into septets
    frag_method=Key(None, _frag_method),  # None, "udh" or "sar": how a long text is split
)

_references = itertools.count(1)  # concatenation references, 16 bits: a counter beats a random pick
_references_lock = threading.Lock()


def _next_reference() -> int:
    with _references_lock:
        return next(_references) % 0x10000


class Resource(resource.Resource):
    """`submit_sm` through interface <name>'s bound session; not transactional (the original's
    was not either: an SMSC takes a message or refuses it, there is nothing to commit)."""

    transactional = False
    inline = True  # every wait is bounded by the request's deadline
    needs_interfaces = True

    def __init__(self, name: str, config: dict[str, Any], *, interfaces: Callable[[str], Any]) -> None:
        super().__init__(name, RESOURCE_KEYS_SMPP.read(config, resource_file(name)))
        self.interface_name = name.split("/")[0].partition("__")[0]
        self._interfaces = interfaces
        self._interface: Interface | None = None

    @property
    def expired(self) -> bool:
        return super().expired or self._interface is None or self._interface.ceased or \
            self._interfaces(self.interface_name) is not self._interface

    def connect(self) -> None:
        interface = self._interfaces(self.interface_name)
        if not isinstance(interface, Interface):
            raise ResourceError(f"interface {self.interface_name} is unavailable: resource {self.interface_name} "
                                f"sends through the SMPP interface of the same name", recoverable=True)
        if interface.config["esme_type"] == "rcvr":
            raise ResourceError(f"interface {self.interface_name} is bound as a receiver (esme_type \"rcvr\"): "
                                f"it cannot submit, bind it as \"xmit\" or \"xcvr\"", recoverable=True)
        self._interface = interface

    def submit_sm(self, *, dest_addr_ton: int = 0, dest_addr_npi: int = 0, destination_addr: str,
                  short_message: str | bytes, **pdu_fields: Any) -> str | None:
        """Submit a short message; the SMSC's message_id (of the last part with one), or None
        if `asynchronous`.

        A str is sent in GSM 03.38 (data_coding 0x00) when every character has a place there,
        else in UCS-2 (0x08), or in the `data_coding` given; bytes need their `data_coding`.
        A text too long for one message is split as `frag_method` says, never inside a
        character or an escape pair. `pdu_fields` may set any submit_sm field or TLV, and
        `udh=[(iei, bytes)]` information elements of the user data header."""
        fields, parts = self._build(dest_addr_ton, dest_addr_npi, destination_addr, short_message, pdu_fields)
        session = self._session()
        log.info(f"short message of {len(parts)} part(s) to {destination_addr!r} through interface "
                 f"{self.interface_name}")
        sent: list[Pending] = []
        deadline = time.monotonic() + _request.current().remain
        try:
            for part in parts:
                try:
                    sent.append(session.send("submit_sm", {**fields, **part}, expires=deadline))
                except smpppdu.SMPPError as e:  # a field SMPP cannot carry: found on the first part
                    raise ResourceError(f"submit_sm to {destination_addr!r} cannot be built: {e}",
                                        recoverable=not sent, terminal=False) from None
            if self.config["asynchronous"]:
                return None
            return self._answers(session, fields, parts, sent, deadline)
        except SmppError as e:
            # safe to submit again only if the SMSC cannot have taken any part: nothing reached
            # it, or it refused the only part (a generic_nack)
            alone = len(parts) == 1 or not any(p.settled and p.error is None for p in sent)
            raise ResourceError(f"submit_sm to {destination_addr!r}: {e}", code=e.status,
                                recoverable=(not e.sent or e.answered) and alone, terminal=False) from None

    def _session(self) -> Session:
        assert self._interface is not None
        session = self._interface.bound_session(_request.current().remain)
        if session is None:
            raise ResourceError(f"interface {self.interface_name} is not bound to the SMSC (it is binding again, "
                                f"see its log): the message was not sent", recoverable=True, terminal=False)
        return session

    def _answers(self, session: Session, fields: dict[str, Any], parts: list[dict[str, Any]],
                 sent: list[Pending], deadline: float) -> str | None:
        """Wait for each part's answer; a part the SMSC throttled is submitted again after a
        back-off, within the deadline. The last distinct message_id, as the original."""
        message_id: str | None = None
        for index, pending in enumerate(sent):
            response = self._accepted(session, {**fields, **parts[index]}, pending, deadline, len(parts) == 1)
            answer = response.message_id
            text = answer.decode("ascii", "replace") if isinstance(answer, bytes) else str(answer or "")
            if text:
                message_id = text
        return message_id

    def _accepted(self, session: Session, fields: dict[str, Any], pending: Pending, deadline: float,
                  alone: bool) -> Any:
        """The SMSC's answer to one part, once it took it; ResourceError if it refused, recoverable
        when the part is the message's only one (the other parts are all sent before any answer
        is read, so the SMSC may have taken them)."""
        delay, throttled = THROTTLE_FIRST, None
        while True:
            try:
                response = pending.wait(deadline)
            except SmppError as e:
                if throttled is None:
                    raise
                # a resubmission unanswered: what the user must hear first is that the SMSC throttled it
                raise ResourceError(f"the SMSC throttled it ({status_text(throttled)}) and did not answer it "
                                    f"again in time: {e}", code=throttled, recoverable=False, terminal=False) from None
            if response.status == 0:
                return response
            throttled = response.status
            # submitted again only if, after the back-off, as long is left for the answer
            if response.status not in (ESME_RTHROTTLED, ESME_RMSGQFUL) or time.monotonic() + 2 * delay >= deadline:
                what = "throttled it until the deadline" if response.status in (ESME_RTHROTTLED, ESME_RMSGQFUL) \
                    else "refused it"
                raise ResourceError(f"the SMSC {what}: {status_text(response.status)}", code=response.status,
                                    recoverable=alone, terminal=False)
            time.sleep(delay)  # the SMSC asked us to slow down: this thread waits, within the deadline
            delay = min(delay * 2, THROTTLE_MAX)
            pending = session.send("submit_sm", fields, expires=deadline)

    def _build(self, ton: int, npi: int, destination: str, short_message: str | bytes,
               pdu_fields: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The fields every part shares, and each part's own (ResourceError, recoverable: nothing
        was sent). The fields are checked as the first part is encoded (Session.send)."""
        c = self.config
        try:
            udh = pdu_fields.pop("udh", None)
            data_coding = pdu_fields.pop("data_coding", None)
            if isinstance(short_message, bytes) and data_coding is None:
                raise ValueError("data_coding is not specified: give it with a short_message of bytes, "
                                 "or give the text as str")
            coding, fragments = smpptext.fragments(short_message, data_coding=data_coding,
                                                   frag_method=c["frag_method"], pack_7bit=c["pack_7bit"],
                                                   reference=_next_reference(), udh=udh)
            esm_class = int(pdu_fields.pop("esm_class", 0))
            shared = {"service_type": "", "source_addr_ton": c["source_addr_ton"],
                      "source_addr_npi": c["source_addr_npi"], "source_addr": c["source_addr"],
                      "dest_addr_ton": ton, "dest_addr_npi": npi, "destination_addr": destination,
                      "esm_class": esm_class, "data_coding": coding, **pdu_fields}
            parts = [self._part(fragment, esm_class) for fragment in fragments]
        except (ValueError, TypeError, smpppdu.SMPPError) as e:
            raise ResourceError(f"submit_sm to {destination!r} cannot be built: {e}", recoverable=True,
                                terminal=False) from None
        return shared, parts

    @staticmethod
    def _part(fragment: Any, esm_class: int) -> dict[str, Any]:
        part: dict[str, Any] = {"esm_class": esm_class | fragment.esm_class_bits}
        if len(fragment.short_message) > MAX_SHORT_MESSAGE:  # one long message: SMPP carries it as a TLV
            part["message_payload"] = fragment.short_message
        else:
            part["short_message"] = fragment.short_message
        if fragment.sar is not None:
            part["sar_msg_ref_num"], part["sar_total_segments"], part["sar_segment_seqnum"] = fragment.sar
        return part
