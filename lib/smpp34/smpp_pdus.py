"""The original's `smpp34.smpp_pdus`: `from smpp34.smpp_pdus import *` gives its PDU class names,
which are pmnc.protocols.smpppdu's. PDU, RequestPDU, ResponsePDU and GenericNackPDU are not in
__all__, as in the original, but are reachable as smpp34.smpp_pdus.<name>."""

from pmnc.protocols.smpppdu import PDU as PDU
from pmnc.protocols.smpppdu import (
    AlertNotificationPDU,
    BindReceiverPDU,
    BindReceiverRespPDU,
    BindTransceiverPDU,
    BindTransceiverRespPDU,
    BindTransmitterPDU,
    BindTransmitterRespPDU,
    CancelSmPDU,
    CancelSmRespPDU,
    DataSmPDU,
    DataSmRespPDU,
    DeliverSmPDU,
    DeliverSmRespPDU,
    EnquireLinkPDU,
    EnquireLinkRespPDU,
    OutbindPDU,
    QuerySmPDU,
    QuerySmRespPDU,
    ReplaceSmPDU,
    ReplaceSmRespPDU,
    SubmitMultiPDU,
    SubmitMultiRespPDU,
    SubmitSmPDU,
    SubmitSmRespPDU,
    UnbindPDU,
    UnbindRespPDU,
)
from pmnc.protocols.smpppdu import GenericNackPDU as GenericNackPDU
from pmnc.protocols.smpppdu import RequestPDU as RequestPDU
from pmnc.protocols.smpppdu import ResponsePDU as ResponsePDU

__all__ = [  # the original's names
    "AlertNotificationPDU", "BindReceiverPDU", "BindReceiverRespPDU", "BindTransceiverPDU",
    "BindTransceiverRespPDU", "BindTransmitterPDU", "BindTransmitterRespPDU", "CancelSmPDU",
    "CancelSmRespPDU", "DataSmPDU", "DataSmRespPDU", "DeliverSmPDU", "DeliverSmRespPDU",
    "EnquireLinkPDU", "EnquireLinkRespPDU", "OutbindPDU", "QuerySmPDU", "QuerySmRespPDU",
    "ReplaceSmPDU", "ReplaceSmRespPDU", "SubmitMultiPDU", "SubmitMultiRespPDU", "SubmitSmPDU",
    "SubmitSmRespPDU", "UnbindPDU", "UnbindRespPDU",
]
