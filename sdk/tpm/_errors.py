"""Errors raised by the TPM transports and the vTPM buffer codec."""

from __future__ import annotations

from .._errors import InvalidFormat

__all__ = ["TransportError"]


class TransportError(InvalidFormat):
    """A peer broke the framing of a TPM transport (mssim, swtpm or the SVSM vTPM buffer).

    The socket drivers drop the offending connection; a guest sees INVALID_FORMAT.
    Nothing is wrong with our side, so callers log it and carry on serving others.
    """
