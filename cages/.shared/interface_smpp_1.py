# The handler of an SMPP interface: called on a worker thread for each request PDU from the
# SMSC (deliver_sm, data_sm, query_sm, ...), several at once.
#
# request  = {"pdu": DeliverSmPDU(...),          the PDU, of the original's classes (smpp34.smpp_pdus)
#             and for deliver_sm / data_sm, the message taken apart:
#             "text": "...",                     decoded by data_coding (None for binary data)
#             "data_coding": 0, "esm_class": 0,
#             "source_addr": "3161...", "destination_addr": "...",
#             "udh": [(iei, b"...")] or None,    the user data header's information elements
#             "tlvs": {"receipted_message_id": b"...", ...},   every optional parameter present
#             "receipt": {"id", "sub", "dlvrd", "submit_date", "done_date", "stat", "err", "text"}
#                        for a delivery receipt, else None
#             "parts": [pdu, ...]}               a concatenated message's PDUs, reassembled
# response = {"pdu": <a generic_nack ESME_RUNKNOWNERR until the handler puts an answer here>}
#
# The answer goes to the SMSC after this returns; raise and it gets generic_nack ESME_RSYSERR;
# run past the deadline and it gets nothing (either way the SMSC delivers the PDU again).

import smpp34.smpp_errors
import smpp34.smpp_pdus
from smpp34.smpp_errors import error_codes
from smpp34.smpp_pdus import DataSmPDU, DeliverSmPDU, QuerySmPDU

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    pdu = request["pdu"]
    if isinstance(pdu, (DeliverSmPDU, DataSmPDU)):
        if request["receipt"] is not None:
            pmnc.log.message(f"message {request['receipt']['id']} is {request['receipt']['stat']}")
        else:
            pmnc.log.message(f"short message from {request['source_addr']}: {request['text']!r}")
        response["pdu"] = pdu.create_response(message_id=b"")
    elif isinstance(pdu, QuerySmPDU):
        response["pdu"] = pdu.create_response(message_id=pdu.message_id.value, final_date=b"",
                                              message_state=0x03, error_code=0x00)
    else:
        response["pdu"] = pdu.create_nack(error_codes.ESME_RINVCMDID)


# EOF
