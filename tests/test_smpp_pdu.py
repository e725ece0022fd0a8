"""SMPP 3.4 PDUs with the original's classes (pmnc.protocols.smpppdu, smpp34.*): built,
written and read through smpplib, checked against bytes laid out by hand from the spec.
No servers: test_smpp.py meets the real SMSC."""

from __future__ import annotations

import itertools
import pickle
import struct
import threading
import types
from typing import Any

import pytest
import smpp34.smpp_errors
import smpp34.smpp_pdus
import smpplib.smpp
from hypothesis import given, settings
from hypothesis import strategies as st
from pmnc.errors import ProtocolError, ResourceError, ResourceInputParameterError
from pmnc.protocols import smpppdu
from pmnc.protocols.smpppdu import (
    DataSmPDU,
    DataSmRespPDU,
    DeliverSmPDU,
    GenericNackPDU,
    QuerySmPDU,
    SMPPCOctetString,
    SMPPInteger1,
    SMPPInteger2,
    SMPPInteger4,
    SMPPOctetString,
    SMPPPDUCreateError,
    SMPPPDUReadError,
    SMPPResponseError,
    SubmitSmPDU,
    SubmitSmRespPDU,
    error_codes,
    parse,
    status_text,
)

# --- the wire, by hand (SMPP 3.4 §3.2, §5) -------------------------------------------------------


def cstr(text: bytes) -> bytes:
    return text + b"\0"


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def wire(command_id: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    return struct.pack(">LLLL", 16 + len(body), command_id, status, sequence) + body


DELIVER_SM_FIELDS: dict[str, Any] = dict(
    service_type=b"", source_addr_ton=1, source_addr_npi=1, source_addr=b"SENDER", dest_addr_ton=1,
    dest_addr_npi=1, destination_addr=b"12345", esm_class=0, protocol_id=0, priority_flag=0,
    schedule_delivery_time=b"", validity_period=b"", registered_delivery=0, replace_if_present_flag=0,
    data_coding=0, sm_default_msg_id=0,
)


def deliver_sm_body(esm_class: int = 0) -> bytes:
    """DELIVER_SM_FIELDS as §4.6.1 lays them out, up to sm_length."""
    return (cstr(b"") + b"\x01\x01" + cstr(b"SENDER") + b"\x01\x01" + cstr(b"12345") + bytes((esm_class, 0, 0))
            + cstr(b"") + cstr(b"") + b"\x00\x00\x00\x00")


DELIVER_SM_BODY = deliver_sm_body()

SUBMIT_SM_FIELDS = {**DELIVER_SM_FIELDS, "source_addr": b"PMNC", "destination_addr": b"79991234567",
                    "registered_delivery": 1, "data_coding": 8}


class Client:
    """What smpplib's parse_pdu asks of its client (smppwire passes its smpplib Client)."""

    sequence = 0

    def next_sequence(self) -> int:
        return 1


def deliver_sm(**fields: Any) -> DeliverSmPDU:
    return DeliverSmPDU.create(**{**DELIVER_SM_FIELDS, "short_message": b"hello", **fields})


# --- the original's sample handler, unchanged --------------------------------------------------

SAMPLE_HANDLER = '''
import smpp34.smpp_errors; from smpp34.smpp_errors import error_codes
import smpp34.smpp_pdus; from smpp34.smpp_pdus import *

def process_request(request: dict, response: dict):
    req = request["pdu"]
    if isinstance(req, QuerySmPDU):
        response["pdu"] = req.create_response(message_id = req.message_id.value, final_date = b"",
                                              message_state = 0x03, error_code = 0x00)

def self_test():
    req_pdu = QuerySmPDU.create(message_id = b"RECEIPT", source_addr_ton = 0x00, source_addr_npi = 0x01,
                                source_addr = b"SENDER")
    req = dict(pdu = req_pdu)
    resp = dict(pdu = req_pdu.create_nack(error_codes.ESME_RUNKNOWNERR))
    process_request(req, resp)
    resp_pdu = resp["pdu"]
    assert isinstance(resp_pdu, QuerySmRespPDU)
    return req_pdu, resp_pdu
'''


def test_the_original_sample_handler_runs_unchanged() -> None:
    module = types.ModuleType("interface_smpp_1")
    exec(compile(SAMPLE_HANDLER, "interface_smpp_1.py", "exec"), module.__dict__)
    request, response = module.self_test()
    assert response.sequence_number == request.sequence_number
    assert response.message_id.value == b"RECEIPT" and response.message_state.value == 3
    assert response.serialize() == wire(0x80000003, 0, request.sequence_number.value,
                                        cstr(b"RECEIPT") + cstr(b"") + b"\x03\x00")
    assert parse(response.serialize()) == response
    assert request.serialize() == wire(0x00000003, 0, request.sequence_number.value,
                                       cstr(b"RECEIPT") + b"\x00\x01" + cstr(b"SENDER"))


def test_a_nack_from_the_handler_default_is_a_generic_nack() -> None:
    module = types.ModuleType("interface_smpp_1")
    exec(compile(SAMPLE_HANDLER, "interface_smpp_1.py", "exec"), module.__dict__)
    request = deliver_sm(sequence_number=9)
    response = {"pdu": request.create_nack(error_codes.ESME_RUNKNOWNERR)}
    module.process_request({"pdu": request}, response)  # not a query_sm: the default stays
    assert response["pdu"].serialize() == wire(0x80000000, 0xFF, 9)


def test_star_imports_give_the_original_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from smpp34.smpp_pdus import *\nfrom smpp34.smpp_errors import *", namespace)
    original = {"BindReceiverPDU", "BindTransmitterPDU", "DataSmRespPDU", "SubmitSmPDU", "DeliverSmRespPDU",
                "UnbindRespPDU", "BindReceiverRespPDU", "CancelSmPDU", "BindTransceiverRespPDU", "OutbindPDU",
                "BindTransmitterRespPDU", "DataSmPDU", "EnquireLinkPDU", "SubmitSmRespPDU", "DeliverSmPDU",
                "SubmitMultiRespPDU", "UnbindPDU", "ReplaceSmPDU", "CancelSmRespPDU", "BindTransceiverPDU",
                "SubmitMultiPDU", "AlertNotificationPDU", "ReplaceSmRespPDU", "QuerySmPDU", "QuerySmRespPDU",
                "EnquireLinkRespPDU", "SMPPError", "SMPPTypeReadError", "SMPPParameterError", "SMPPPDUReadError",
                "SMPPPDUCreateError", "SMPPConnectionError", "SMPPResponseError", "error_codes"}
    assert {name for name in namespace if not name.startswith("__")} == original
    assert namespace["DeliverSmPDU"] is DeliverSmPDU and namespace["error_codes"] is error_codes
    assert smpp34.smpp_pdus.GenericNackPDU is GenericNackPDU and smpp34.smpp_pdus.RequestPDU is smpppdu.RequestPDU
    assert smpp34.smpp_errors.SMPPResponseError is SMPPResponseError


# --- byte-exact against the spec -----------------------------------------------------------------


def test_deliver_sm_is_written_as_the_spec_lays_it_out() -> None:
    pdu = deliver_sm(sequence_number=5, receipted_message_id=b"abc", message_state=2, sar_msg_ref_num=0x1234,
                     sar_total_segments=2, sar_segment_seqnum=1)
    expected = wire(0x00000005, 0, 5, DELIVER_SM_BODY + b"\x05hello" + tlv(0x020C, b"\x12\x34")
                    + tlv(0x020E, b"\x02") + tlv(0x020F, b"\x01") + tlv(0x0427, b"\x02") + tlv(0x001E, b"abc\0"))
    assert pdu.serialize() == expected
    assert parse(expected) == pdu


def test_deliver_sm_is_read_with_its_tlvs_in_any_order() -> None:
    raw = wire(0x00000005, 0, 7, DELIVER_SM_BODY + b"\x00" + tlv(0x001E, b"MSG-1\0") + tlv(0x0427, b"\x02")
               + tlv(0x0424, b"a long text") + tlv(0x020F, b"\x02") + tlv(0x020E, b"\x03") + tlv(0x020C, b"\x00\x07"))
    pdu = parse(raw)
    assert isinstance(pdu, DeliverSmPDU) and pdu.sequence_number == SMPPInteger4(7)
    assert pdu.source_addr == SMPPCOctetString(b"SENDER") and pdu.source_addr.value == b"SENDER"
    assert pdu.sm_length.value == 0 and pdu.short_message.value == b""
    assert pdu.receipted_message_id.value == b"MSG-1" and pdu.message_state == SMPPInteger1(2)
    assert pdu.message_payload == SMPPOctetString(b"a long text")
    assert (pdu.sar_msg_ref_num, pdu.sar_total_segments.value, pdu.sar_segment_seqnum.value) == (SMPPInteger2(7), 3, 2)
    assert not hasattr(pdu, "network_error_code") and not hasattr(pdu, "user_message_reference")
    assert pdu.udh is None
    assert pdu.fields["destination_addr"] == b"12345" and pdu.fields["message_state"] == 2


def test_submit_sm_resp_is_written_as_the_spec_lays_it_out() -> None:
    request = SubmitSmPDU.create(sequence_number=0x01020304, **SUBMIT_SM_FIELDS, short_message=b"\x00h\x00i")
    response = request.create_response(message_id=b"0123abcd")
    assert response.serialize() == wire(0x80000004, 0, 0x01020304, cstr(b"0123abcd"))
    assert parse(response.serialize()) == response and isinstance(response, SubmitSmRespPDU)
    response.throw_if_error()


def test_an_error_response_without_fields_has_no_body() -> None:
    response = SubmitSmPDU.create(sequence_number=3, **SUBMIT_SM_FIELDS, short_message=b"x").create_response(
        error_codes.ESME_RTHROTTLED)
    assert response.serialize() == wire(0x80000004, 0x58, 3)  # §4.4.2: no body with an error status
    read = parse(response.serialize())
    assert read == response and not hasattr(read, "message_id")
    with pytest.raises(SMPPResponseError) as caught:
        read.throw_if_error()
    assert str(caught.value) == "SMPP error ESME_RTHROTTLED (Throttling error (ESME has exceeded allowed message " \
                                "limits))"
    assert caught.value.status == 0x58 and caught.value.recoverable and not caught.value.terminal


def test_submit_sm_is_written_as_the_spec_lays_it_out() -> None:
    pdu = SubmitSmPDU.create(sequence_number=1, **SUBMIT_SM_FIELDS, short_message=b"\x04\x10",
                             user_message_reference=513)
    body = (cstr(b"") + b"\x01\x01" + cstr(b"PMNC") + b"\x01\x01" + cstr(b"79991234567") + b"\x00\x00\x00"
            + cstr(b"") + cstr(b"") + b"\x01\x00\x08\x00" + b"\x02\x04\x10" + tlv(0x0204, b"\x02\x01"))
    assert pdu.serialize() == wire(0x00000004, 0, 1, body)


def test_str_reads_like_the_original() -> None:
    pdu = SubmitSmRespPDU.create(sequence_number=1, message_id=b"X\"\x01")
    assert str(pdu) == 'SubmitSmRespPDU(sequence_number = SMPPInteger4(0x00000001), ' \
                       'message_id = SMPPCOctetString("X\\"\\x01"))'
    nack = GenericNackPDU.create(error_codes.ESME_RINVCMDID, 0x2A)
    assert f"{nack}" == "GenericNackPDU(command_status = ESME_RINVCMDID, sequence_number = SMPPInteger4(0x0000002a))"
    assert str(GenericNackPDU.create(0x400, 1)).startswith("GenericNackPDU(command_status = SMPPInteger4(0x00000400)")
    assert str(deliver_sm(sequence_number=1, message_state=2)).endswith(
        'short_message = SMPPOctetString("hello"), message_state = SMPPInteger1(0x02))')


# --- round trips ---------------------------------------------------------------------------------

BIND = dict(system_id=b"pmnc", password=b"secret", system_type=b"", interface_version=0x34, addr_ton=0,
            addr_npi=0, address_range=b"")
REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("deliver_sm", {**DELIVER_SM_FIELDS, "short_message": b"hi", "sar_msg_ref_num": 1, "sar_total_segments": 2,
                    "sar_segment_seqnum": 2, "receipted_message_id": b"R1", "message_state": 2},
     {"message_id": b""}),
    ("deliver_sm", {**DELIVER_SM_FIELDS, "short_message": b"", "message_payload": b"\x00" * 300}, {"message_id": b""}),
    ("data_sm", {key: DELIVER_SM_FIELDS[key] for key in ("service_type", "source_addr_ton", "source_addr_npi",
                                                        "source_addr", "dest_addr_ton", "dest_addr_npi",
                                                        "destination_addr", "esm_class", "registered_delivery",
                                                        "data_coding")}
     | {"message_payload": b"payload", "receipted_message_id": b"", "message_state": 6, "sar_msg_ref_num": 9,
        "alert_on_message_delivery": b"", "source_telematics_id": 0x0102, "qos_time_to_live": 0x01020304},
     {"message_id": b"M", "delivery_failure_reason": 1, "network_error_code": b"\x03\x00\x01",
      "additional_status_info_text": b"busy", "dpf_result": 1}),
    ("query_sm", {"message_id": b"Q", "source_addr_ton": 0, "source_addr_npi": 1, "source_addr": b"S"},
     {"message_id": b"Q", "final_date": b"240101120000000+", "message_state": 2, "error_code": 0}),
    ("submit_sm", {**SUBMIT_SM_FIELDS, "short_message": b"x" * 254, "source_addr_subunit": 1, "dest_addr_subunit": 2},
     {"message_id": b"a" * 64}),
    ("enquire_link", {}, {}),
    ("unbind", {}, {}),
    ("bind_transmitter", BIND, {"system_id": b"smsc", "sc_interface_version": 0x34}),
    ("bind_receiver", BIND, {"system_id": b"smsc"}),
    ("bind_transceiver", BIND, {"system_id": b""}),
]


@pytest.mark.parametrize(("command", "fields", "response_fields"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_requests_and_responses_survive_writing_and_reading(command: str, fields: dict[str, Any],
                                                            response_fields: dict[str, Any]) -> None:
    cls = smpppdu._BY_COMMAND[command]
    request = cls.create(**fields)
    assert parse(request.serialize()) == request
    assert request.fields == {**fields, **({"sm_length": len(fields["short_message"])} if "short_message" in fields
                                           else {})}
    response = request.create_response(**response_fields)
    assert response.command == command + "_resp" and response.sequence_number == request.sequence_number
    read = parse(response.serialize())
    assert read == response and read.fields == response_fields
    nack = request.create_nack(error_codes.ESME_RSYSERR)
    assert parse(nack.serialize()) == nack and isinstance(nack, GenericNackPDU)


def test_smpplibs_own_parse_gives_the_same_pdu() -> None:
    pdu = deliver_sm(sequence_number=11, receipted_message_id=b"abc", message_state=2, sar_msg_ref_num=3,
                     network_error_code=b"\x03\x00\x05")
    command = smpplib.smpp.parse_pdu(pdu.serialize(), client=Client(), allow_unknown_opt_params=True)
    assert smpppdu.from_smpplib(command) == pdu


def test_data_sm_resp_tlvs_smpplib_types_wrongly_are_written_per_spec() -> None:
    request = DataSmPDU.create(**REQUESTS[2][1])
    response = request.create_response(message_id=b"", delivery_failure_reason=2, network_error_code=b"\x03\x00\x01")
    assert response.serialize() == wire(0x80000103, 0, request.sequence_number.value,
                                        cstr(b"") + tlv(0x0425, b"\x02") + tlv(0x0423, b"\x03\x00\x01"))
    assert isinstance(response, DataSmRespPDU)


# --- smpplib's faults, put right -----------------------------------------------------------------


def test_a_c_string_tlv_keeps_its_bytes_and_an_empty_one_is_sent() -> None:
    # smpplib would send receipted_message_id UTF-8 encoded, its length in characters, and drop b""
    pdu = deliver_sm(sequence_number=1, receipted_message_id=b"ab\xe9")
    assert pdu.serialize().endswith(tlv(0x001E, b"ab\xe9\0"))
    assert parse(pdu.serialize()).receipted_message_id.value == b"ab\xe9"
    empty = deliver_sm(sequence_number=1, receipted_message_id=b"")
    assert empty.serialize().endswith(tlv(0x001E, b"\0")) and parse(empty.serialize()).receipted_message_id.value == b""


def test_a_zero_length_tlv_is_sent_and_read() -> None:
    fields = REQUESTS[2][1]
    pdu = DataSmPDU.create(**{**fields, "alert_on_msg_delivery": b""})  # the original's spelling
    assert tlv(0x130C, b"") in pdu.serialize()
    assert parse(pdu.serialize()).alert_on_message_delivery == SMPPOctetString(b"")


def test_tlvs_smpplib_does_not_expect_are_read() -> None:
    raw = wire(0x00000005, 0, 1, DELIVER_SM_BODY + b"\x02hi"
               + tlv(0x0501, b"\x01")  # ussd_service_op: SMPP allows it in deliver_sm, smpplib raises KeyError
               + tlv(0x001E, b"no-nul")  # a C string TLV without its NUL: smpplib drops its last byte
               + tlv(0x0427, b"\x00\x02")  # an integer longer than expected: smpplib reads one byte and loses its place
               + tlv(0x7777, b"vendor")  # unknown: skipped
               + tlv(0x020C, b"\x00\x05"))
    pdu = parse(raw)
    assert pdu.ussd_service_op.value == 1 and pdu.receipted_message_id.value == b"no-nul"
    assert pdu.message_state.value == 2 and pdu.sar_msg_ref_num.value == 5
    with pytest.raises(KeyError):
        smpplib.smpp.parse_pdu(raw, client=Client(), allow_unknown_opt_params=True)


def test_the_sequence_number_given_is_the_one_written() -> None:
    # smpplib.smpp.make_pdu("submit_sm_resp", sequence=5, ...) writes sequence 0
    assert smpplib.smpp.make_pdu("submit_sm_resp", sequence=5, message_id="x").generate()[12:16] == b"\0\0\0\0"
    command = smpppdu.make_command("submit_sm_resp", sequence=5, message_id="x")
    assert command.generate() == wire(0x80000004, 0, 5, cstr(b"x"))


def test_wire_fields_converts_for_smpplib_and_refuses_what_it_would_truncate() -> None:
    fields = smpppdu.wire_fields("submit_sm", {"source_addr": b"\xa3shop", "destination_addr": "123",
                                               "esm_class": 0, "data_coding": 8, "sar_msg_ref_num": 7})
    assert fields == {"source_addr": "\xa3shop", "destination_addr": "123", "esm_class": 0, "data_coding": 8,
                      "sar_msg_ref_num": 7}
    for make in (smpplib.smpp.make_pdu, smpppdu.make_command):
        command = make("submit_sm", sequence=1, short_message=b"hi", **fields)
        command.sequence = 1
        read = parse(command.generate())
        assert read.source_addr.value == b"\xa3shop" and read.destination_addr.value == b"123"
        assert read.short_message.value == b"hi" and read.sar_msg_ref_num.value == 7 and read.protocol_id.value == 0
    with pytest.raises(SMPPPDUCreateError, match="destination_addr is 25 bytes, SMPP allows at most 20"):
        smpppdu.wire_fields("submit_sm", {"destination_addr": "1" * 25})
    with pytest.raises(SMPPPDUCreateError, match=r"unexpected parameter.*colour"):
        smpppdu.wire_fields("submit_sm", {"colour": 1})


def test_to_smpplib_gives_smpplibs_command_for_its_client() -> None:
    pdu = deliver_sm(sequence_number=77, message_state=2)
    command = smpppdu.to_smpplib(pdu)
    assert isinstance(command, smpplib.command.DeliverSM) and command.command == "deliver_sm"
    assert command.sequence == 77 and command.generate() == pdu.serialize()


# --- building: what is refused -------------------------------------------------------------------


def test_a_field_too_long_for_smpp_is_refused_not_truncated() -> None:
    with pytest.raises(SMPPPDUCreateError) as caught:
        deliver_sm(destination_addr=b"1" * 25)
    assert str(caught.value) == "failed to create DeliverSmPDU: destination_addr is 25 bytes, SMPP allows at most 20"
    assert isinstance(caught.value, ResourceInputParameterError) and caught.value.recoverable
    deliver_sm(destination_addr=b"1" * 20)
    with pytest.raises(SMPPPDUCreateError, match="short_message is 255 bytes, SMPP allows at most 254"):
        deliver_sm(short_message=b"x" * 255)
    with pytest.raises(SMPPPDUCreateError, match="sar_msg_ref_num is 65536, SMPP allows 0 to 65535"):
        deliver_sm(sar_msg_ref_num=0x10000)
    with pytest.raises(SMPPPDUCreateError, match="source_addr has a NUL byte"):
        deliver_sm(source_addr=b"a\0b")
    with pytest.raises(SMPPPDUCreateError, match="source_addr has characters outside latin-1"):
        deliver_sm(source_addr="Ж")
    with pytest.raises(SMPPPDUCreateError, match="esm_class must be an int, not str"):
        deliver_sm(esm_class="0")


def test_an_unknown_or_missing_field_is_refused_by_name() -> None:
    with pytest.raises(SMPPPDUCreateError, match=r"failed to create DeliverSmPDU: unexpected parameter\(s\) colour"):
        deliver_sm(colour=b"red")
    with pytest.raises(SMPPPDUCreateError, match="value for message_id is not specified"):
        deliver_sm().create_response()
    with pytest.raises(SMPPPDUCreateError, match="sm_length follows short_message"):
        deliver_sm(sm_length=5)
    with pytest.raises(SMPPPDUCreateError, match="cannot both carry"):
        deliver_sm(message_payload=b"more")
    with pytest.raises(SMPPPDUCreateError, match="a request's command_status is ESME_ROK"):
        QuerySmPDU.create(error_codes.ESME_RSYSERR, message_id=b"x", source_addr_ton=0, source_addr_npi=0,
                          source_addr=b"")
    with pytest.raises(SMPPPDUCreateError, match="not ESME_ROK"):
        deliver_sm().create_nack(error_codes.ESME_ROK)


def test_commands_smpplib_cannot_write_exist_but_refuse_to_be_built() -> None:
    for name in ("CancelSmPDU", "ReplaceSmPDU", "SubmitMultiPDU", "OutbindPDU", "SubmitMultiRespPDU"):
        cls = getattr(smpp34.smpp_pdus, name)
        assert not cls.supported and cls.mandatory_parameters
        with pytest.raises(SMPPPDUCreateError, match=f"{name} cannot be built: smpplib.*does not support"):
            cls.create()
    with pytest.raises(SMPPPDUReadError, match=r"cancel_sm \(0x00000008\) is not supported by smpplib"):
        parse(wire(0x00000008, 0, 1, b"\0" * 8))


# --- udh ------------------------------------------------------------------------------------------


def test_udh_goes_before_the_short_message_and_sets_esm_class() -> None:
    pdu = deliver_sm(sequence_number=2, esm_class=0x04, udh=[(0x00, b"\x2a\x02\x01")], short_message=b"part one")
    assert pdu.esm_class.value == 0x44 and pdu.udh == [(0x00, b"\x2a\x02\x01")]
    assert pdu.short_message.value == b"\x05\x00\x03\x2a\x02\x01part one" and pdu.sm_length.value == 14
    read = parse(pdu.serialize())
    assert read.udh == [(0x00, b"\x2a\x02\x01")] and read == pdu
    sixteen = deliver_sm(esm_class=0, udh=[(0x08, b"\x12\x34\x03\x01"), (0x24, b"")], short_message="text")
    assert parse(sixteen.serialize()).udh == [(0x08, b"\x12\x34\x03\x01"), (0x24, b"")]
    assert deliver_sm().udh is None and parse(deliver_sm().serialize()).udh is None


def test_a_udh_that_cannot_be_read_leaves_the_message_whole() -> None:
    raw = wire(0x00000005, 0, 1, deliver_sm_body(esm_class=0x40) + b"\x02\x09x")  # says 9 octets of UDH, has 1
    pdu = parse(raw)
    assert pdu.esm_class.value == 0x40 and pdu.udh is None and pdu.short_message.value == b"\x09x"
    with pytest.raises(SMPPPDUCreateError, match="udh element"):
        deliver_sm(esm_class=0, udh=[(0x100, b"")])


# --- reading: what is refused --------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "message"), [
    (b"\0\0\0\x10\0\0\0\x05", "a PDU has at least 16 bytes, this one 8"),
    (wire(0x00000015, 0, 1)[:-1] + b"\0\0", "command_length says 16 bytes, the PDU has 17"),
    (wire(0x12345678, 0, 1), "command id 0x12345678 is not supported"),
    (wire(0x00000005, 0, 1, b"\0\x01\x01SENDER"), "failed to read deliver_sm #1: source_addr has no NUL at its end"),
    (wire(0x00000005, 0, 1, DELIVER_SM_BODY + b"\x05hi"), "short_message needs 5 byte"),
    (wire(0x00000005, 0, 1, DELIVER_SM_BODY + b"\x00" + struct.pack(">HH", 0x0427, 2) + b"\x02"), "TLV 0x0427 needs 2"),
    (wire(0x00000005, 0, 1, DELIVER_SM_BODY + b"\x00\x04\x27"), "a TLV header needs 4 byte"),
    (wire(0x00000005, 0, 1, DELIVER_SM_BODY + b"\x00" + tlv(0x0427, b"")), "message_state has 0 byte"),
    (wire(0x00000005, 0, 1, cstr(b"") + b"\x01\x01" + cstr(b"S")), "failed to read DeliverSmPDU: the body ends "
                                                                   "before dest_addr_ton"),
])
def test_broken_pdus_are_refused_with_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(SMPPPDUReadError, match=message.replace("(", r"\(")) as caught:
        parse(raw)
    assert isinstance(caught.value, ProtocolError)


@settings(max_examples=400, deadline=None)
@given(command_id=st.sampled_from([0x00000005, 0x00000103, 0x80000004, 0x00000003, 0x80000003, 0x00000009]),
       status=st.sampled_from([0, 0x58]), body=st.binary(max_size=80))
def test_any_body_parses_or_is_refused_as_a_read_error(command_id: int, status: int, body: bytes) -> None:
    try:
        pdu = parse(wire(command_id, status, 1, body))
    except SMPPPDUReadError:
        return
    assert pdu.command_id.value == command_id
    if pdu.supported and pdu.fields and not isinstance(pdu, smpppdu.ResponsePDU):
        assert isinstance(pdu.serialize(), bytes)


TEXT = st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"."))


@settings(max_examples=200, deadline=None)
@given(source=TEXT, destination=TEXT, short_message=st.binary(max_size=254), esm_class=st.integers(0, 255),
       data_coding=st.integers(0, 255), sequence=st.integers(1, 0x7FFFFFFF),
       tlvs=st.fixed_dictionaries({}, optional={"sar_msg_ref_num": st.integers(0, 0xFFFF),
                                                "receipted_message_id": st.binary(max_size=64).map(
                                                    lambda b: b.replace(b"\0", b".")),
                                                "message_state": st.integers(0, 255),
                                                "network_error_code": st.binary(min_size=3, max_size=3),
                                                "user_message_reference": st.integers(0, 0xFFFF)}))
def test_any_deliver_sm_survives_writing_and_reading(source: bytes, destination: bytes, short_message: bytes,
                                                     esm_class: int, data_coding: int, sequence: int,
                                                     tlvs: dict[str, Any]) -> None:
    pdu = deliver_sm(sequence_number=sequence, source_addr=source, destination_addr=destination,
                     short_message=short_message, esm_class=esm_class, data_coding=data_coding, **tlvs)
    raw = pdu.serialize()
    assert struct.unpack(">L", raw[:4])[0] == len(raw)
    assert parse(raw) == pdu
    assert smpppdu.from_smpplib(smpppdu.parse_command(raw)) == pdu


# --- statuses, values, sequence numbers ------------------------------------------------------------


def test_error_codes_look_up_both_ways() -> None:
    assert error_codes.ESME_ROK == 0 and error_codes.ESME_RTHROTTLED == 0x58 and error_codes.ESME_RUNKNOWNERR == 0xFF
    assert 0x0E in error_codes and 0x09 not in error_codes and len(error_codes) == 48
    assert error_codes[0x58] == {"name": "ESME_RTHROTTLED",
                                 "description": "Throttling error (ESME has exceeded allowed message limits)"}
    assert error_codes[0x07]["description"] == "Invalid Registered Delivery Flag"
    assert status_text(0x0E) == "ESME_RINVPASWD (Invalid Password)"
    assert status_text(0x123) == "0x00000123 (unknown status)"
    with pytest.raises(AttributeError, match=r"ESME_RNOPE is not an SMPP 3\.4 command status"):
        error_codes.ESME_RNOPE  # noqa: B018
    with pytest.raises(KeyError):
        error_codes[0x123]


def test_throw_if_error_says_the_status() -> None:
    GenericNackPDU.create(0, 1).throw_if_error()
    with pytest.raises(SMPPResponseError, match=r"^SMPP error 0x00000400 \(unknown status\)$") as caught:
        GenericNackPDU.create(0x400, 1).throw_if_error()
    assert isinstance(caught.value, ResourceError) and caught.value.status == 0x400
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (type(copy), str(copy), copy.status) == (SMPPResponseError, str(caught.value), 0x400)


def test_values_compare_by_type_and_value() -> None:
    assert SMPPInteger1(5) == SMPPInteger1(5) and SMPPInteger1(5) != SMPPInteger2(5) and SMPPInteger1(5) != 5
    assert {SMPPCOctetString(b"a"), SMPPCOctetString(b"a")} == {SMPPCOctetString(b"a")}
    assert str(SMPPInteger2(0x12)) == "SMPPInteger2(0x0012)" and len(SMPPOctetString(b"abc")) == 3
    with pytest.raises(ValueError, match="SMPPInteger1 holds 0 to 0xff, not 256"):
        SMPPInteger1(256)
    with pytest.raises(ValueError, match="takes bytes, not str"):
        SMPPOctetString("x")  # type: ignore[arg-type]
    pdu = deliver_sm(sequence_number=1)
    assert deliver_sm(sequence_number=1) == pdu and deliver_sm(sequence_number=2) != pdu
    assert deliver_sm(sequence_number=1, short_message=b"hellO") != pdu


def test_fields_given_as_values_or_str_are_taken() -> None:
    request = deliver_sm(source_addr="SENDER")
    response = request.create_response(message_id=request.source_addr)  # a value object, as the original allowed
    assert response.message_id.value == b"SENDER" and request.source_addr.value == b"SENDER"


def test_sequence_numbers_are_unique_across_threads_and_wrap_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        numbers = [GenericNackPDU.create(1).sequence_number.value for _ in range(500)]
        with lock:
            seen.extend(numbers)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 4000 and all(1 <= n <= 0x7FFFFFFF for n in seen)
    monkeypatch.setattr(smpppdu, "_sequence", itertools.count(0x7FFFFFFE))
    assert [smpppdu.next_sequence_number() for _ in range(3)] == [0x7FFFFFFF, 1, 2]


# --- the resource's hot path: submit_sm written in one pass, answers read straight ----------------

_SUBMIT_SM_FIELDS = [name for name in SubmitSmPDU.mandatory_parameters + SubmitSmPDU.optional_parameters
                     if name != "sm_length"]


def _field_values(name: str) -> st.SearchStrategy[Any]:
    kind = smpppdu._KINDS[name]
    if issubclass(kind.type, smpppdu.SMPPInteger):
        return st.integers(0, (1 << 8 * kind.type.size) - 1)
    if kind.type is smpppdu.SMPPCOctetString:
        return st.binary(max_size=kind.most).filter(lambda data: b"\0" not in data) | st.text(
            st.characters(max_codepoint=0xFF, blacklist_characters="\0"), max_size=kind.most)
    return st.binary(min_size=kind.least, max_size=min(kind.most, 300))


_SUBMIT_SMS = st.lists(st.sampled_from(_SUBMIT_SM_FIELDS), unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: _field_values(name) for name in names}))


@settings(max_examples=400, deadline=None)
@given(_SUBMIT_SMS, st.integers(1, 0x7FFFFFFF))
def test_submit_sm_bytes_are_the_bytes_smpplib_writes(fields: dict[str, Any], sequence: int) -> None:
    if fields.get("short_message") and "message_payload" in fields:
        with pytest.raises(SMPPPDUCreateError, match="cannot both carry"):
            smpppdu.submit_sm_bytes(sequence, fields)
        return
    expected = smpppdu.make_command("submit_sm", sequence=sequence,
                                    **smpppdu.wire_fields("submit_sm", fields)).generate()
    assert smpppdu.submit_sm_bytes(sequence, fields) == expected


@pytest.mark.parametrize("fields, error", [
    ({"destination_addr": "3" * 21}, "destination_addr is 21 bytes, SMPP allows at most 20"),
    ({"source_addr": b"a\0b"}, "NUL"),
    ({"esm_class": 256}, "esm_class is 256"),
    ({"registered_delivery": "1"}, "must be an int"),
    ({"short_message": b"x" * 255}, "short_message is 255 bytes"),
    ({"no_such_field": 1}, "unexpected parameter"),
])
def test_submit_sm_bytes_refuses_what_create_refuses(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(SMPPPDUCreateError, match=error):
        smpppdu.submit_sm_bytes(1, fields)
    with pytest.raises(SMPPPDUCreateError, match=error):
        smpppdu.wire_fields("submit_sm", fields)


@pytest.mark.parametrize("raw", [
    struct.pack(">LLLL", 22, 0x80000004, 0, 7) + b"msg-1\0",
    struct.pack(">LLLL", 17, 0x80000004, 0x58, 8) + b"\0",
    struct.pack(">LLLL", 16, 0x80000004, 0x45, 9),
    struct.pack(">LLLL", 16, 0x80000000, 0x03, 10),
    struct.pack(">LLLL", 16, 0x80000015, 0, 11),
])
def test_the_answers_read_straight_are_what_smpplib_reads(raw: bytes) -> None:
    from pmnc.protocols.smppwire import _Answer
    answer = _Answer.of(raw)
    assert answer is not None
    parsed = smpppdu.parse_command(raw)
    assert (answer.command, answer.status, answer.sequence) == (parsed.command, parsed.status, parsed.sequence)
    if answer.command == "submit_sm_resp":
        assert answer.message_id == (parsed.message_id or b"")


def test_odd_answers_go_to_smpplib() -> None:
    from pmnc.protocols.smppwire import _Answer
    assert _Answer.of(struct.pack(">LLLL", 21, 0x80000004, 0, 7) + b"msg-1") is None  # no NUL
    assert _Answer.of(struct.pack(">LLLL", 24, 0x80000004, 0, 7) + b"m\0" + b"\x14\x27\x00\x01\x02\x00") is None
    assert _Answer.of(struct.pack(">LLLL", 17, 0x80000015, 0, 7) + b"x") is None  # a body where none goes
    assert _Answer.of(struct.pack(">LLLL", 16, 0x00000015, 0, 7)) is None  # a request
