"""Cage-to-cage calls over NATS (config_cluster.py transport "nats"): the caller's exchange and
the callee's subscription. Everything above them - the envelope, the codec, the request carried
along, the callee's lifecycle, the errors - is the direct transport's (protocols/rpc.py).

A call is a NATS request on `pmnc.<flock>.call.<cage>`; every instance of the cage subscribes
in the queue group named after it, so NATS spreads calls among the instances, skips those that
have gone and finds new ones: no discovery, no connection per instance. Each message is sealed
(seal.py): the callee runs only calls a cage of the flock has sealed, and the caller takes only
an answer the cage it called has sealed - whoever else may publish on the subject.

Time: the caller waits for the answer until its request's deadline and no longer; the callee
continues the request with the time the caller had left, less the margin for the way back
(wire.callee_timeout), as over the direct transport. A callee that is stopping unsubscribes
first; a call that reaches it meanwhile is refused without running and goes to another instance.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pmnc import log
from pmnc import request as _request
from pmnc.errors import (
    DeadlineError,
    IntakeClosedError,
    ProtocolError,
    RequestExpiredError,
    ResourceError,
    ResourceInputParameterError,
    RPCDeadlineError,
    exc_string,
)
from pmnc.lifecycle import Outcome
from pmnc.rpc import codec, wire
from pmnc.rpc.bus import Bus, NatsNoResponders, NatsTimeout
from pmnc.rpc.callee import Callee, remain
from pmnc.rpc.identity import Identity
from pmnc.rpc.locator import ADVERT, Location, Packet, decode_packet, encode_packet
from pmnc.rpc.seal import Opened, Retry, SealError, describe

if TYPE_CHECKING:
    from pmnc.rpc.cluster import Cluster

Runner = Callable[[dict[str, Any], Identity], dict[str, Any]]
Answer = Callable[[dict[str, Any] | None], None]  # an answer to send; None: the refusal of a call not run

FIRST_CONTACTS = 3  # exchanges of certificates a call may need before it is sent sealed
REFUSAL_PAUSE = 0.02  # seconds before a call refused by a stopping instance is sent again
REFUSALS_LOG_PERIOD = 10.0  # seconds between log lines about refused messages, however many come
DISCOVERY_WAIT = 0.5  # seconds a discovery listens for the instances' answers
OVER_NATS = "nats"  # a Location's host and source for an instance found on NATS
ADVERT_PERIOD = 5.0  # what an advert over NATS says (it answers a discovery, and is not repeated)


def instance_subject(flock: str, instance: str) -> str:
    """The subject of calls to exactly one instance (the health monitor's probes)."""
    return f"pmnc.{flock}.instance.{instance}"


def discovery_subject(flock: str) -> str:
    return f"pmnc.{flock}.discover"


def discover(cluster: Cluster, wait: float = DISCOVERY_WAIT) -> list[Location]:
    """Every instance of the flock serving calls on NATS, by the adverts they answer a
    discovery with (MACed with the cluster key, as on a LAN: nobody else can add one)."""
    assert cluster.bus is not None
    found = {}
    for data in cluster.bus.gather(discovery_subject(cluster.flock), b"", wait):
        packet = decode_packet(cluster.keys.hmac_key, data, OVER_NATS, time.time())
        if packet is not None and packet.kind == ADVERT and packet.flock == cluster.flock:
            found[packet.instance] = Location(packet.cage, packet.node, packet.instance, OVER_NATS, 0, OVER_NATS)
    return list(found.values())


def exchange(cluster: Cluster, target: str, frame: bytes, request: _request.Request, subject: str = "") -> Any:
    """The answer (a reply dict, or wire.REFUSED) to the call `frame` from an instance of cage
    `target` (the one `subject` reaches, if given), within the request's deadline."""
    assert cluster.bus is not None and cluster.sealer is not None
    bus, sealer, subject = cluster.bus, cluster.sealer, subject or cluster.subject(target)
    for _ in range(FIRST_CONTACTS + 1):
        message, pending = sealer.seal_call(target, frame, request.remain)
        if len(message) > bus.max_payload:
            raise ResourceInputParameterError(f"the call cannot be sent to cage {target}: {len(message)} bytes "
                                              f"exceed the NATS server's max_payload of {bus.max_payload} bytes")
        data = _request_answer(bus, subject, message, target, request)
        try:
            opened = sealer.open_reply(pending, data)
        except SealError as e:
            raise ResourceError(f"cage {target}: the answer over NATS is refused: {e}", recoverable=False,
                                terminal=False) from None
        if isinstance(opened, Retry):
            continue  # certificates exchanged: the call has not run, it goes again sealed
        try:
            return codec.decode(opened, limit=cluster.max_frame_size, allow_pickle=cluster.use_pickle)
        except ProtocolError as e:
            raise ResourceError(f"cage {target} answered with a bad frame: {e}", recoverable=False,
                                terminal=False) from None
    raise ResourceError(f"cage {target}: its instances and this cage could not agree on certificates "
                        f"(the call has not run)", recoverable=True, terminal=False)


def _request_answer(bus: Bus, subject: str, message: bytes, target: str, request: _request.Request) -> bytes:
    try:
        return bus.request(subject, message, request.remain)
    except NatsTimeout as e:
        raise RPCDeadlineError(f"request deadline waiting for a response from cage {target} over NATS: "
                               f"{e}") from None
    except NatsNoResponders:
        raise ResourceError(f"no instance of cage {target} serves calls on NATS", recoverable=True,
                            terminal=False) from None


def call_until_answered(cluster: Cluster, target: str, frame: bytes, request: _request.Request) -> Any:
    """`exchange`, sent again while instances that are stopping refuse it (it has not run
    there; NATS gives the next try to another instance), within the deadline."""
    while True:
        reply = exchange(cluster, target, frame, request)
        if not wire.is_refusal(reply):
            return reply
        if request.remain <= REFUSAL_PAUSE:
            raise ResourceError(f"cage {target} is stopping, and no other instance of it has taken the call "
                                f"(it has not run)", recoverable=True, terminal=False)
        log.debug(f"an instance of cage {target} is stopping, the call goes again")
        time.sleep(REFUSAL_PAUSE)


# --- the callee ---------------------------------------------------------------------------------


class NatsCallee:
    """The rpc interface's side over NATS: one queue-group subscription (and one of this instance
    alone, for the health monitor), each call opened on the link's reader that read it and run
    through the lifecycle there when another reader reads on (`Bus.may_block`), else on the
    worker pool; its answer sealed and published from the thread that ran it."""

    def __init__(self, cluster: Cluster, callee: Callee, *, run_call: Runner, accept_retried: Runner,
                 limit: int, use_pickle: bool, poll_limit: float) -> None:
        assert cluster.bus is not None and cluster.sealer is not None
        self.cluster, self.bus, self.sealer, self.callee = cluster, cluster.bus, cluster.sealer, callee
        self.subject = cluster.subject(cluster.cage)
        self.instance = cluster.locator.instance
        self.exact_subject = instance_subject(cluster.flock, self.instance)
        self.runners = {"call": run_call, "retry": accept_retried}
        self.limit, self.use_pickle, self.poll_limit = limit, use_pickle, poll_limit
        self.refused = codec.encode(wire.REFUSED, limit=limit)
        self.refusals = _Refusals(self.subject)
        self.ceasing = False
        self.answering = 0  # calls taken and not yet answered
        self.answered = threading.Condition(threading.Lock())

    def start(self) -> None:
        cluster = self.cluster
        self.bus.subscribe(self.subject, cluster.cage, self._on_message)
        self.bus.subscribe(self.exact_subject, "", self._on_message)
        self.bus.subscribe(discovery_subject(cluster.flock), "", self._on_discover)

    def cease(self) -> None:
        """No new calls: the subscriptions end, so NATS gives them to the other instances."""
        self.ceasing = True
        for subject in (discovery_subject(self.cluster.flock), self.subject, self.exact_subject):
            self.bus.unsubscribe_all(subject)

    def stop(self, grace: float) -> None:
        """After the drain: the answers of calls that have run are sent before the cage's
        connection to NATS closes (a request ends at the intake just before its answer goes)."""
        with self.answered:
            if not self.answered.wait_for(lambda: self.answering == 0, grace):
                log.warning(f"NATS: {self.answering} answer(s) not sent within {grace:.1f}s of the cage stopping")

    def _on_discover(self, data: bytes, reply: str) -> None:
        """On a reader of the link: this instance's advert, to whoever discovers the flock's instances."""
        cluster = self.cluster
        if reply:
            packet = Packet(ADVERT, cluster.flock, self.instance, cluster.cage, cluster.node, OVER_NATS, 0,
                            ADVERT_PERIOD, OVER_NATS, time.time())
            self.bus.publish(reply, encode_packet(cluster.keys.hmac_key, packet))

    def _on_message(self, data: bytes, reply: str) -> None:
        """On a reader of the link: a call opened and run, or answered at once."""
        if not reply:
            return  # nobody to answer: not a call
        arrived = time.monotonic()
        opened = self.sealer.open_call(data)
        if isinstance(opened, bytes):  # refused, or certificates exchanged: nothing runs
            self.refusals.note(describe(opened), arrived)
            self.bus.publish(reply, opened)
            return
        with self.answered:
            self.answering += 1
        answer = functools.partial(self._answer, reply, opened)
        try:
            envelope = codec.decode(opened.body, limit=self.limit, allow_pickle=self.use_pickle)
            if not isinstance(envelope, dict):
                raise ProtocolError("a message that is not a call")
            kind = envelope.get("kind")
            runner = self.runners.get(kind) if isinstance(kind, str) else None
            if runner is not None:
                self._run(envelope, opened.caller, arrived, runner, answer)
            elif kind == "poll":
                threading.Thread(target=self._poll, args=(envelope, opened.caller, answer),
                                 name=f"rpc:poll:{opened.caller}", daemon=True).start()
            elif kind == "post":
                accepted = self.cluster.reverse.post(opened.caller, str(envelope.get("call_id")),
                                                     envelope.get("reply"))
                answer({"result": accepted})
            else:
                raise ProtocolError(f"unknown kind of call {kind!r}")
        except (ProtocolError, KeyError, TypeError, ValueError) as e:
            log.warning(f"NATS: cage {opened.caller}: {exc_string(e, stack=False)}")
            error = e if isinstance(e, ProtocolError) else ProtocolError(f"malformed call: {e}")
            answer({"error": wire.error_dict(error)})

    def _run(self, envelope: dict[str, Any], caller: str, arrived: float, runner: Runner,
             answer: Answer) -> None:
        if self.ceasing:
            answer(None)  # the refusal: not run here, the caller sends it again
            return
        try:
            request = self.callee.request(envelope, caller, arrived)
        except IntakeClosedError:
            answer(None)
            return
        identity = Identity(self.cluster.flock, caller)
        if self.bus.may_block():  # another reader reads on: run it here, as the direct transport does
            answer(self._call(request, runner, envelope, identity))
        else:
            self.callee.lifecycle.submit(request, runner, envelope, identity,
                                         when_done=functools.partial(self._done, request, answer))

    def _call(self, request: _request.Request, runner: Runner, envelope: dict[str, Any],
              identity: Identity) -> dict[str, Any] | None:
        """The call run on this thread if a worker slot is free, else queued and waited for."""
        try:
            reply: dict[str, Any] = self.callee.lifecycle.call(request, runner, envelope, identity)
        except Exception as e:
            return self._failure(request, e)
        return reply

    def _done(self, request: _request.Request, answer: Answer,
              outcome: Outcome) -> None:
        """On the worker's thread: the call's answer, or why it has none."""
        if outcome.error is None:
            answer(outcome.result)
        else:
            answer(self._failure(request, outcome.error))

    def _failure(self, request: _request.Request, error: BaseException) -> dict[str, Any] | None:
        """The answer to a call that has not run to its end: a deadline error, or None (the
        refusal) when the cage is stopping."""
        if isinstance(error, RequestExpiredError):
            log.warning(f"request {request.unique_id} has not been answered in time, the caller gets a deadline "
                        f"error")
            return {"error": wire.error_dict(DeadlineError(f"request deadline has expired in cage "
                                                           f"{self.cluster.cage}"))}
        if isinstance(error, IntakeClosedError):
            return None
        return {"error": wire.error_dict(error)}

    def _poll(self, envelope: dict[str, Any], caller: str, answer: Answer) -> None:
        """On a thread of its own: a reverse-call poll, long as the direct transport's."""
        try:
            answer({"result": self.cluster.reverse.calls_for(caller, remain(envelope), self.poll_limit)})
        except Exception as e:
            answer({"error": wire.error_dict(e)})

    def _answer(self, reply: str, opened: Opened, answer: dict[str, Any] | None) -> None:
        """Seal and publish an answer (None: the refusal of a call that has not run)."""
        if answer is None:
            frame = self.refused
        else:
            frame = wire.answer_frame(answer, self.limit, self.use_pickle, opened.caller)
        try:
            sealed = self.sealer.seal_reply(opened.ticket, frame)
            if len(sealed) > self.bus.max_payload:
                error = ProtocolError(f"the answer of {len(sealed)} bytes exceeds the NATS server's max_payload "
                                      f"of {self.bus.max_payload} bytes")
                log.warning(f"the answer to cage {opened.caller} cannot be sent: {error}")
                sealed = self.sealer.seal_reply(opened.ticket, codec.encode({"error": wire.error_dict(error)}))
            self.bus.publish(reply, sealed)
        finally:
            with self.answered:
                self.answering -= 1
                self.answered.notify_all()


class _Refusals:
    """Messages on the subject whose seal is refused: logged, but not one line each - a
    stranger publishing garbage must not flood the log."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.count, self.logged_at, self.last = 0, -REFUSALS_LOG_PERIOD, ""

    def note(self, outcome: str, now: float) -> None:
        if not outcome.startswith(("refused", "malformed")):
            return  # certificates exchanged: the caller seals the call again
        self.count, self.last = self.count + 1, outcome
        if now - self.logged_at >= REFUSALS_LOG_PERIOD:
            log.warning(f"NATS: {self.count} message(s) on {self.subject} refused, not run; the last: {self.last}")
            self.count, self.logged_at = 0, now
