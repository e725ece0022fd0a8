"""The smpp interface and resource against a real SMSC: node-smpp (tests/smpp_peer.py).

Each test runs a cage in this process whose interface smpp_1 binds to the SMSC; its handler
(HANDLER below) writes what it was given into the cage's `seen` folder, and the SMSC's control
port tells what reached it and how each PDU it delivered was answered.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, InProcessCage, config_source, module_source, wait_until, write_file
from peers import Relay
from pmnc.errors import ResourceError
from pmnc.request import fake_request
from smpp_peer import Smsc

# --- the handler and what it saw ----------------------------------------------------------------

HANDLER_BODY = """
    import datetime, json, os, time, uuid
    HERE = os.path.dirname(__file__)
    FAIL_FIRST = {fail_first}  # the first call raises (a marker file remembers it was made)
    SLOW_FIRST = {slow_first}  # seconds the first call works before it answers

    def _plain(value):
        if isinstance(value, bytes):
            return {{"bytes": value.decode("latin-1")}}
        if isinstance(value, datetime.datetime):
            return {{"datetime": value.isoformat()}}
        raise TypeError(type(value).__name__)

    def _first():
        try:
            os.close(os.open(os.path.join(HERE, "first-call"), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def process_request(request, response):
        pdu = request["pdu"]
        if _first():
            if FAIL_FIRST:
                raise RuntimeError("the handler fails the first time")
            time.sleep(SLOW_FIRST)  # the work takes this long
        record = {{k: v for k, v in request.items() if k not in ("pdu", "parts")}}
        record["command"] = pdu.command
        record["parts"] = len(request.get("parts", []))
        folder = os.path.join(HERE, "seen")
        os.makedirs(folder, exist_ok=True)
        name = f"{{time.monotonic_ns()}}-{{uuid.uuid4().hex}}"
        with open(os.path.join(folder, name + ".tmp"), "w") as f:
            json.dump(record, f, default=_plain)
        os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name + ".json"))
        response["pdu"] = pdu.create_response(message_id=b"")
"""


def handler(*, fail_first: bool = False, slow_first: float = 0.0) -> str:
    return module_source(HANDLER_BODY.format(fail_first=fail_first, slow_first=slow_first), ["process_request"])


HANDLER = handler()


def _revive(value: dict[str, Any]) -> Any:
    if set(value) == {"bytes"}:
        return value["bytes"].encode("latin-1")
    if set(value) == {"datetime"}:
        return datetime.fromisoformat(value["datetime"])
    return value


def seen(cage_dir: Path) -> list[dict[str, Any]]:
    """What the handler was given, in the order it was handled (bytes and datetimes as they were)."""
    folder = cage_dir / "seen"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text(), object_hook=_revive) for p in sorted(folder.glob("*.json"))]


def seen_count(cage: InProcessCage, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until the handler has seen `count` requests; them."""
    return wait_until(lambda: len(s := seen(cage.cage_dir)) >= count and s, timeout,  # type: ignore[no-any-return]
                      message=f"{count} requests handled")


def delivered(smsc: Smsc, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until the SMSC has `count` deliveries settled (answered well, or given up); them."""
    def settled() -> list[dict[str, Any]] | None:
        deliveries = smsc.stats()["deliveries"]
        return deliveries if len(deliveries) >= count and all(d["done"] for d in deliveries) else None
    return wait_until(settled, timeout, message=f"{count} deliveries settled")  # type: ignore[no-any-return]


# --- the cage -------------------------------------------------------------------------------------

RESOURCE = {"protocol": "smpp", "source_addr": "pmnc", "frag_method": "udh"}


def start(in_process_cage: Any, smsc: Smsc, *, handler: str = HANDLER, resource: dict[str, Any] | None = None,
          bound: bool = True, **interface: Any) -> tuple[InProcessCage, Any]:
    """A cage with interface smpp_1 on this SMSC (its config overridden by `interface`) and
    resource smpp_1; bound (unless told not to wait); and its `pmnc`, for this thread's request."""
    config = smsc.config(**interface)
    cage = in_process_cage(interfaces={"smpp_1": config},
                           files={"interface_smpp_1.py": handler,
                                  "config_resource_smpp_1.py": config_source({**RESOURCE, **(resource or {})})})
    if bound:
        wait_until(lambda: smsc.bound(), message="bound to the SMSC")
    fake_request(20.0)
    return cage, cage.cage.runtime.pmnc("test")


def submit(pmnc: Any, **fields: Any) -> str | None:
    """xa.smpp_1.submit_sm(**fields) in a transaction of its own: its message_id."""
    fields.setdefault("destination_addr", "31600000001")
    xa = pmnc.transaction.create()
    xa.smpp_1.submit_sm(**fields)
    (message_id,) = xa.execute()
    return message_id  # type: ignore[no-any-return]


def short_message(body_hex: str) -> bytes:
    """short_message of a submit_sm body (SMPP 3.4 4.4.1) as the SMSC recorded it."""
    body = bytes.fromhex(body_hex)
    at = body.index(0) + 1  # service_type
    at += 2
    at = body.index(0, at) + 1  # source_addr
    at += 2
    at = body.index(0, at) + 1  # destination_addr
    at += 3  # esm_class, protocol_id, priority_flag
    at = body.index(0, at) + 1  # schedule_delivery_time
    at = body.index(0, at) + 1  # validity_period
    at += 4  # registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id
    length = body[at]
    return body[at + 1:at + 1 + length]


def air_octets(data: bytes, data_coding: int, esm_class: int) -> int:
    """The octets a short_message takes over the air: unpacked GSM 03.38 (one septet an octet
    in SMPP) is packed by the SMSC, its UDH padded to a septet boundary (GSM 03.40 9.2.3.24)."""
    if data_coding != 0x00:
        return len(data)
    udh = data[0] + 1 if esm_class & 0x40 else 0
    septets = -(-udh * 8 // 7) + len(data) - udh
    return -(-septets * 7 // 8)


class Tap(Relay):
    """A TCP relay between the interface and the SMSC: the connections the interface makes
    (when), and every PDU it sends, as they are on the wire."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target, observe=self._keep)
        self.pdus: list[bytes] = []
        self._buffer = b""

    def _keep(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 16:
            length = int.from_bytes(self._buffer[:4], "big")
            if length < 16 or len(self._buffer) < length:
                return
            self.pdus.append(self._buffer[:length])
            self._buffer = self._buffer[length:]

    def sent(self, command_id: int) -> list[tuple[int, int]]:
        """(command_status, sequence_number) of each PDU with this command id the interface sent."""
        return [(int.from_bytes(p[8:12], "big"), int.from_bytes(p[12:16], "big")) for p in self.pdus
                if int.from_bytes(p[4:8], "big") == command_id]


@pytest.fixture
def tap(smsc: Smsc) -> Iterator[Tap]:
    relay = Tap(smsc.address)
    yield relay
    relay.close()


# --- binds ------------------------------------------------------------------------------------------

BINDS = {"xmit": "bind_transmitter", "rcvr": "bind_receiver", "xcvr": "bind_transceiver"}


@pytest.mark.parametrize("esme_type", ["xmit", "rcvr", "xcvr"])
def test_bind_of_each_type(smsc: Smsc, in_process_cage: Any, esme_type: str) -> None:
    cage, pmnc = start(in_process_cage, smsc, esme_type=esme_type, system_id=f"id-{esme_type}",
                       system_type=f"type-{esme_type}")
    assert smsc.bound() == [{"kind": BINDS[esme_type], "system_id": f"id-{esme_type}",
                             "system_type": f"type-{esme_type}"}]
    if esme_type == "rcvr":
        with pytest.raises(ResourceError, match=r"interface smpp_1 is bound as a receiver \(esme_type \"rcvr\"\): "
                                                r"it cannot submit") as info:
            submit(pmnc, short_message="not from a receiver")
        assert info.value.recoverable
        assert smsc.stats()["submits"] == []
    else:
        message_id = submit(pmnc, short_message=f"from {esme_type}")
        assert [(s["id"], s["text"]) for s in smsc.stats()["submits"]] == [(message_id, f"from {esme_type}")]
    queued = smsc.mo(f"to {esme_type}")
    if esme_type == "xmit":
        assert queued == 0  # the SMSC has nothing to send a transmitter
    else:
        assert queued == 1
        assert [r["text"] for r in seen_count(cage, 1)] == [f"to {esme_type}"]
        assert delivered(smsc, 1)[0]["statuses"] == [0]


def test_wrong_password_one_error_back_off_then_bound_once_fixed(smsc: Smsc, tap: Tap, in_process_cage: Any) -> None:
    cage, _ = start(in_process_cage, smsc, bound=False, server_address=tap.address, password="wrong")
    wait_until(lambda: len(tap.connects) >= 3, message="three attempts to bind")
    first, second, third = tap.connects[:3]
    assert 0.4 <= second - first < third - second and third - second >= 0.9  # back-off: 0.5 s, then doubling
    refusals = [line for line in cage.log_text().splitlines() if "ESME_RINVPASWD" in line]
    assert len(refusals) == 1, refusals
    assert "interface smpp_1" in refusals[0] and "refused to bind as bind_transceiver" in refusals[0]
    assert smsc.bound() == []
    write_file(cage.cage_dir / "config_interface_smpp_1.py", config_source(smsc.config(server_address=tap.address)))
    wait_until(lambda: smsc.bound(), message="bound with the right password")
    assert "ESME_RINVPASWD" not in cage.log_text().split(refusals[0], 1)[1]


# --- submits ----------------------------------------------------------------------------------------

def test_200_submits_through_the_window_each_answer_matched(smsc: Smsc, in_process_cage: Any) -> None:
    _, pmnc = start(in_process_cage, smsc, window=10)
    ids = [submit(pmnc, short_message=f"one caller #{i}") for i in range(200)]
    submits = smsc.stats()["submits"]
    assert len(set(ids)) == 200
    assert ids == [s["id"] for s in submits]
    assert [s["text"] for s in submits] == [f"one caller #{i}" for i in range(200)]

    smsc.control(cmd="reset")
    results: dict[int, list[str | None]] = {}
    failures: list[BaseException] = []

    def caller(n: int) -> None:
        fake_request(20.0)
        try:
            results[n] = [submit(pmnc, destination_addr=f"316000001{n:02d}", short_message=f"caller {n} #{i}")
                          for i in range(25)]
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    assert failures == []
    submits = smsc.stats()["submits"]
    by_id = {s["id"]: s for s in submits}
    assert len(submits) == 200 and len(by_id) == 200
    assert sorted(i for ids in results.values() for i in ids) == sorted(by_id)  # type: ignore[type-var]
    for n, ids in results.items():
        assert ids == [s["id"] for s in submits if s["dst"] == f"316000001{n:02d}"]  # in order per caller
        assert [by_id[i]["text"] for i in ids] == [f"caller {n} #{i}" for i in range(25)]


def test_the_window_bounds_the_submits_outstanding(smsc: Smsc, in_process_cage: Any) -> None:
    """With each answer 40 ms late, 80 submits through a window of 4 take at least 20 rounds of
    40 ms; without a window the 16 callers would be done in 5 rounds."""
    _, pmnc = start(in_process_cage, smsc, window=4)
    smsc.set(submit_delay=40)

    def caller(n: int) -> None:
        fake_request(20.0)
        for i in range(5):
            submit(pmnc, destination_addr=f"316000002{n:02d}", short_message=f"#{i}")

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    elapsed = time.monotonic() - began
    assert len(smsc.stats()["submits"]) == 80
    assert elapsed >= 80 / 4 * 0.040 * 0.95, elapsed


def test_delivery_receipts_come_back_to_the_interface(smsc: Smsc, in_process_cage: Any) -> None:
    cage, pmnc = start(in_process_cage, smsc)
    ids = [submit(pmnc, short_message=f"receipt please {i}", registered_delivery=1) for i in range(3)]
    receipts = {r["receipt"]["id"]: r for r in seen_count(cage, 3)}
    assert sorted(receipts) == sorted(ids)  # type: ignore[type-var]
    for message_id, request in receipts.items():
        assert request["esm_class"] == 0x04 and request["source_addr"] == "31600000001"
        assert request["receipt"] == {"id": message_id, "sub": "001", "dlvrd": "001", "stat": "DELIVRD", "err": "000",
                                      "submit_date": datetime(2024, 1, 1, 0, 0),
                                      "done_date": datetime(2024, 1, 1, 0, 1), "text": ""}
        assert request["tlvs"]["receipted_message_id"] == message_id.encode()
        assert request["tlvs"]["message_state"] == 2


# --- what the handler does to the answer --------------------------------------------------------------

def test_a_failing_handler_gets_the_pdu_again_and_handles_it_once(smsc: Smsc, in_process_cage: Any) -> None:
    cage, _ = start(in_process_cage, smsc, handler=handler(fail_first=True))
    smsc.set(redeliver_after=200)
    smsc.mo("fail once, then succeed")
    (delivery,) = delivered(smsc, 1)
    assert delivery["statuses"] == [0x08, 0]  # generic_nack ESME_RSYSERR, then deliver_sm_resp ESME_ROK
    assert [r["text"] for r in seen(cage.cage_dir)] == ["fail once, then succeed"]
    assert "the handler fails the first time" in cage.log_text()


def test_a_handler_past_its_deadline_leaves_the_pdu_unanswered(smsc: Smsc, in_process_cage: Any) -> None:
    """The first run takes 0.6 s of a 0.3 s deadline: no answer at all, so the SMSC (waiting 1 s
    for one) delivers it again; an answer sent late would have ended the delivery at 0.6 s."""
    cage, _ = start(in_process_cage, smsc, handler=handler(slow_first=0.6), request_timeout=0.3)
    smsc.mo("too slow the first time")
    (delivery,) = delivered(smsc, 1)
    assert delivery["statuses"] == ["none", 0]
    assert "the SMSC delivers it again" in cage.log_text()


# --- long texts, concatenated messages ----------------------------------------------------------------

GSM_EXTENSIONS = "{}[]~^|\\€"
LONG_TEXTS = {  # destination: text
    "31600000011": "😀" * 70 + " Привет",  # UCS-2: surrogate pairs across every part boundary a naive split makes
    "31600000012": "x" + "😀" * 70,  # the same, shifted by one UTF-16 unit
    "31600000013": GSM_EXTENSIONS * 40,  # GSM: escape pairs across the boundaries
    "31600000014": "a" + GSM_EXTENSIONS * 40,
}


@pytest.mark.parametrize("frag_method", ["udh", "sar"])
def test_long_texts_split_echoed_and_reassembled(smsc: Smsc, in_process_cage: Any, frag_method: str) -> None:
    cage, pmnc = start(in_process_cage, smsc, resource={"frag_method": frag_method})
    smsc.set(echo=True)
    for destination, text in LONG_TEXTS.items():
        assert submit(pmnc, destination_addr=destination, short_message=text)
    submits = smsc.stats()["submits"]
    handled = {r["destination_addr"]: r for r in seen_count(cage, len(LONG_TEXTS))}
    for destination, text in LONG_TEXTS.items():
        parts = [s for s in submits if s["dst"] == destination]
        assert len(parts) > 1
        assert handled[destination]["text"] == text
        assert handled[destination]["parts"] == len(parts)
        ucs2 = not all(c in GSM_EXTENSIONS + "ax" for c in text)
        user_data = b""
        for seqnum, part in enumerate(parts, 1):
            assert part["dcs"] == (0x08 if ucs2 else 0x00)
            data = short_message(part["body_hex"])
            assert air_octets(data, part["dcs"], part["esm_class"]) <= 140
            if frag_method == "udh":
                assert part["esm_class"] & 0x40 and part["sar"] is None
                data = data[data[0] + 1:]
            else:
                assert not part["esm_class"] & 0x40
                assert part["sar"][1:] == [len(parts), seqnum] and part["sar"][0] == parts[0]["sar"][0]
            if ucs2:
                assert not 0xD800 <= int.from_bytes(data[-2:], "big") <= 0xDBFF  # no lone high surrogate
            else:
                assert data[-1] != 0x1B  # no escape without its character
            user_data += data
        assert len(user_data) == (len(text.encode("utf-16-be")) if ucs2 else len(text) + text.count("€") +
                                  sum(text.count(c) for c in GSM_EXTENSIONS[:-1]))


def udh8(reference: int, total: int, seqnum: int) -> bytes:
    return bytes([5, 0x00, 3, reference, total, seqnum])


def udh16(reference: int, total: int, seqnum: int) -> bytes:
    return bytes([6, 0x08, 4, reference >> 8, reference & 0xFF, total, seqnum])


GSM_BODY = b"Costs 10\x1b\x65 \x1b\x28ok\x1b\x29, paid."  # "Costs 10€ {ok}, paid." in GSM 03.38
GSM_PARTS = [GSM_BODY[:9], GSM_BODY[9:14], GSM_BODY[14:]]  # the first ends inside the escape pair of "€"
UCS2_TEXT = "Первая, вторая 😀 и третья."
UCS2_BODY = UCS2_TEXT.encode("utf-16-be")
SPLIT = UCS2_BODY.index("😀".encode("utf-16-be")) + 2  # between the two surrogates
UCS2_PARTS = [UCS2_BODY[:12], UCS2_BODY[12:SPLIT], UCS2_BODY[SPLIT:]]


def test_concatenated_mo_built_by_hand_is_reassembled_in_any_order(smsc: Smsc, in_process_cage: Any) -> None:
    cage, _ = start(in_process_cage, smsc)
    order = [2, 0, 1]
    for i in order:  # UDH, 8-bit reference
        smsc.mo(hex=(udh8(0x42, 3, i + 1) + GSM_PARTS[i]).hex(), source="31611111111", fields={"esm_class": 0x40})
    for i in order:  # UDH, 16-bit reference
        smsc.mo(hex=(udh16(0x4243, 3, i + 1) + UCS2_PARTS[i]).hex(), source="31622222222",
                fields={"esm_class": 0x40, "data_coding": 0x08})
    for i in order:  # SAR TLVs
        smsc.mo(hex=GSM_PARTS[i].hex(), source="31633333333",
                fields={"sar_msg_ref_num": 0x4244, "sar_total_segments": 3, "sar_segment_seqnum": i + 1})
    handled = {r["source_addr"]: r for r in seen_count(cage, 3)}
    assert {source: (r["text"], r["parts"]) for source, r in handled.items()} == {
        "31611111111": ("Costs 10€ {ok}, paid.", 3),
        "31622222222": (UCS2_TEXT, 3),
        "31633333333": ("Costs 10€ {ok}, paid.", 3)}
    assert handled["31611111111"]["udh"] == [[0x00, bytes([0x42, 3, 2])]]  # the completing part's
    assert handled["31633333333"]["tlvs"]["sar_msg_ref_num"] == 0x4244
    assert [d["statuses"] for d in delivered(smsc, 9)] == [[0]] * 9
    assert len(seen(cage.cage_dir)) == 3


def test_a_concatenated_message_whose_handler_fails_completes_again(smsc: Smsc, in_process_cage: Any) -> None:
    cage, _ = start(in_process_cage, smsc, handler=handler(fail_first=True))
    smsc.set(redeliver_after=200)
    for i in range(3):
        smsc.mo(hex=(udh8(7, 3, i + 1) + GSM_PARTS[i]).hex(), fields={"esm_class": 0x40})
    assert [d["statuses"] for d in delivered(smsc, 3)] == [[0], [0], [0x08, 0]]
    assert [(r["text"], r["parts"]) for r in seen(cage.cage_dir)] == [("Costs 10€ {ok}, paid.", 3)]


def test_parts_that_never_complete_are_dropped_after_parts_timeout(smsc: Smsc, in_process_cage: Any) -> None:
    cage, _ = start(in_process_cage, smsc, parts_timeout=0.3)
    for i in range(2):
        smsc.mo(hex=(udh8(9, 3, i + 1) + GSM_PARTS[i]).hex(), fields={"esm_class": 0x40})
    wait_until(lambda: "had 2 of its 3 parts after 0.3s (parts_timeout), the parts are dropped" in cage.log_text(),
               message="the parts dropped")
    assert "from '31699999999' to '31600000001' (reference 9)" in cage.log_text()
    smsc.mo(hex=(udh8(9, 3, 3) + GSM_PARTS[2]).hex(), fields={"esm_class": 0x40})
    # the last part alone completes nothing (had it, the handler would have run before its answer)
    assert [d["statuses"] for d in delivered(smsc, 3)] == [[0]] * 3
    assert seen(cage.cage_dir) == []


def test_data_sm_from_the_smsc_is_a_request_answered_with_data_sm_resp(smsc: Smsc, in_process_cage: Any) -> None:
    cage, _ = start(in_process_cage, smsc)
    text = "data_sm: Привет 😀"
    smsc.mo(command="data_sm", payload_hex=text.encode("utf-16-be").hex(), fields={"data_coding": 0x08})
    (request,) = seen_count(cage, 1)
    assert (request["command"], request["text"], request["data_coding"]) == ("data_sm", text, 0x08)
    assert request["tlvs"]["message_payload"] == text.encode("utf-16-be")
    (delivery,) = delivered(smsc, 1)
    assert delivery["statuses"] == [0]  # done: a response (a generic_nack would have been delivered again)


def test_a_long_message_in_message_payload_round_trip(smsc: Smsc, in_process_cage: Any) -> None:
    """frag_method None: a text too long for short_message goes whole, in message_payload, and
    comes back (echoed as a deliver_sm) whole."""
    cage, pmnc = start(in_process_cage, smsc, resource={"frag_method": None})
    smsc.set(echo=True)
    text = "Одним куском, " * 20
    assert submit(pmnc, short_message=text)
    (part,) = smsc.stats()["submits"]
    assert part["dcs"] == 0x08 and short_message(part["body_hex"]) == b""
    (request,) = seen_count(cage, 1)
    assert (request["command"], request["text"], request["parts"]) == ("deliver_sm", text, 1)
    assert request["tlvs"]["message_payload"] == text.encode("utf-16-be")


# --- handlers written for the original ---------------------------------------------------------------

def test_the_shipped_template_handler_runs_unchanged(smsc: Smsc, in_process_cage: Any) -> None:
    template = (ROOT / "cages" / ".shared" / "interface_smpp_1.py").read_text()
    cage, pmnc = start(in_process_cage, smsc, handler=template)
    smsc.mo("hello from a phone")
    message_id = submit(pmnc, short_message="receipt please", registered_delivery=1)
    smsc.mo(command="query_sm", fields={"message_id": message_id})
    assert [d["statuses"] for d in delivered(smsc, 3)] == [[0]] * 3
    log = cage.log_text()
    assert "short message from 31699999999: 'hello from a phone'" in log
    assert f"message {message_id} is DELIVRD" in log


ORIGINAL_STYLE = """\
#!/usr/bin/env python3
#-*- coding: iso-8859-1 -*-
# a handler as a Pythomnic3k cage has it: the original's imports, names and answers

__all__ = [ "process_request" ]

import smpp34.smpp_errors; from smpp34.smpp_errors import error_codes
import smpp34.smpp_pdus; from smpp34.smpp_pdus import *

def process_request(request: dict, response: dict):
    req = request["pdu"]
    if isinstance(req, QuerySmPDU):
        response["pdu"] = req.create_response(message_id = req.message_id.value, final_date = b"",
                                              message_state = 0x03, error_code = 0x00)
    elif isinstance(req, DeliverSmPDU) and req.short_message.value == b"accept":
        response["pdu"] = req.create_response(message_id = b"")
    elif isinstance(req, DeliverSmPDU) and req.short_message.value == b"refuse":
        response["pdu"] = req.create_nack(error_codes.ESME_RX_T_APPN)
    # anything else keeps the generic_nack ESME_RUNKNOWNERR the response starts with

# EOF
"""


def test_an_original_style_handler_runs_unchanged(smsc: Smsc, in_process_cage: Any) -> None:
    start(in_process_cage, smsc, handler=ORIGINAL_STYLE)
    smsc.set(max_attempts=1)
    for text in ("accept", "refuse", "ignore"):
        smsc.mo(text)
    smsc.mo(command="query_sm", fields={"message_id": "msg-1"})
    assert [d["statuses"] for d in delivered(smsc, 4)] == [[0], [0x64], [0xFF], [0]]


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "error"), [
    ({"short_message": "Привет", "data_coding": 0x00},
     r"cannot be encoded with data_coding 0x00 \(GSM 03.38\): 'П' \(U\+041F\) at position 0"),
    ({"short_message": "Привет", "data_coding": 0x03}, r"cannot be encoded with data_coding 0x03 \(Latin-1\)"),
    ({"short_message": b"\x01\x02"}, r"data_coding is not specified: give it with a short_message of bytes"),
    ({"short_message": "x", "destination_addr": "1" * 21}, r"destination_addr is 21 bytes, SMPP allows at most 20"),
    ({"short_message": "x", "validity_priod": "000001000000000R"}, r"unexpected parameter\(s\) validity_priod"),
], ids=["gsm", "latin-1", "bytes", "destination", "unknown-field"])
def test_bad_input_from_the_user_is_refused_before_sending(smsc: Smsc, in_process_cage: Any,
                                                           fields: dict[str, Any], error: str) -> None:
    _, pmnc = start(in_process_cage, smsc)
    with pytest.raises(ResourceError, match=r"submit_sm to '\d+' cannot be built: .*" + error) as info:
        submit(pmnc, **fields)
    assert info.value.recoverable
    assert smsc.stats()["submits"] == []
    assert submit(pmnc, short_message="the next one goes")


def test_generic_nack_to_a_submit_is_an_error_and_the_session_lives_on(smsc: Smsc, tap: Tap,
                                                                       in_process_cage: Any) -> None:
    _, pmnc = start(in_process_cage, smsc, server_address=tap.address)
    smsc.set(nack_submits=1)
    with pytest.raises(ResourceError, match=r"submit_sm to '31600000001': the SMSC answered submit_sm #\d+ "
                                            r"with generic_nack ESME_RSYSERR") as info:
        submit(pmnc, short_message="nacked")
    assert info.value.code == 0x08
    message_id = submit(pmnc, short_message="after the nack")
    assert [(s["id"], s["text"]) for s in smsc.stats()["submits"]] == [(message_id, "after the nack")]
    assert len(tap.connects) == 1  # the same session


def test_an_unknown_or_broken_command_from_the_smsc_gets_generic_nack_and_the_session_lives_on(
        smsc: Smsc, tap: Tap, in_process_cage: Any) -> None:
    cage, pmnc = start(in_process_cage, smsc, server_address=tap.address)
    assert smsc.control(cmd="raw", hex="00000014" "00000777" "00000000" "00001234" "deadbeef")["sent"] == 1
    wait_until(lambda: tap.sent(0x80000000), message="generic_nack from the interface")
    assert tap.sent(0x80000000) == [(0x03, 0x1234)]  # ESME_RINVCMDID, to that sequence number
    smsc.control(cmd="raw", hex="00000013" "00000005" "00000000" "00001235" "000102")  # a deliver_sm cut short
    wait_until(lambda: len(tap.sent(0x80000000)) == 2, message="generic_nack to the broken deliver_sm")
    assert tap.sent(0x80000000)[1] == (0x02, 0x1235)  # ESME_RINVCMDLEN
    assert "the SMSC sent command id 0x00000777 #4660" in cage.log_text()
    assert submit(pmnc, short_message="still bound")
    smsc.mo("still delivered")
    assert [r["text"] for r in seen_count(cage, 1)] == ["still delivered"]
    assert len(tap.connects) == 1 and len(smsc.bound()) == 1


def test_asynchronous_submit_returns_at_once_and_the_smsc_gets_it(smsc: Smsc, in_process_cage: Any) -> None:
    _, pmnc = start(in_process_cage, smsc, resource={"asynchronous": True})
    smsc.set(submit_delay=1000)
    began = time.monotonic()
    text = "fire and forget, " * 20  # three parts
    assert submit(pmnc, short_message=text) is None
    assert time.monotonic() - began < 0.8  # it did not wait for the answers
    submits = wait_until(lambda: len(s := smsc.stats()["submits"]) >= 3 and s, message="the parts at the SMSC")
    assert len(submits) == 3
    assert "".join(s["text"] for s in submits) == text
