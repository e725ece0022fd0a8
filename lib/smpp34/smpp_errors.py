"""The original's `smpp34.smpp_errors`: its exception names and `error_codes`, which are
pmnc.protocols.smpppdu's (SMPPPDUCreateError is a ResourceInputParameterError, SMPPPDUReadError
a ProtocolError, SMPPResponseError a recoverable ResourceError with `.status`)."""

from pmnc.protocols.smpppdu import (
    SMPPConnectionError,
    SMPPError,
    SMPPParameterError,
    SMPPPDUCreateError,
    SMPPPDUReadError,
    SMPPResponseError,
    SMPPTypeReadError,
    error_codes,
)

__all__ = [  # the original's names
    "SMPPConnectionError", "SMPPError", "SMPPPDUCreateError", "SMPPPDUReadError",
    "SMPPParameterError", "SMPPResponseError", "SMPPTypeReadError", "error_codes",
]
