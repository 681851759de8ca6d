"""The one error tree of pysvsm and the SVSM result codes.

Lives in the SDK because both sides raise it: the kernel (``svsm.kernel``) and
ring-3 modules, which may import nothing but ``svsm.sdk``.  The single map from
exception to result code is :func:`svsm.kernel.protocols.errors.to_result_code`.

Two families, kept apart on purpose (h11's Local/Remote split, trio's
``TrioInternalError``):

* :class:`RequestError` -- the *caller* (guest, hypervisor or module) sent
  something wrong.  It carries the result code to answer with; the kernel keeps
  running.
* :class:`FatalError` -- the kernel broke one of its own invariants.  The SVSM
  panics (backtrace, VMPCKs wiped, GHCB termination).
"""

from __future__ import annotations

import enum

__all__ = [
    "ResultCode",
    "SvsmError",
    "RequestError",
    "Incomplete",
    "UnsupportedProtocol",
    "UnsupportedCall",
    "InvalidAddress",
    "InvalidFormat",
    "InvalidParameter",
    "InvalidRequest",
    "Busy",
    "ProtocolError",
    "FatalError",
]

PROTOCOL_BASE = 0x8000_1000


class ResultCode(enum.IntEnum):
    """SVSM call result codes (coconut-svsm.md 2.1, snp.md 4.5), returned in RAX."""

    SUCCESS = 0
    INCOMPLETE = 0x8000_0000
    UNSUPPORTED_PROTOCOL = 0x8000_0001
    UNSUPPORTED_CALL = 0x8000_0002
    INVALID_ADDRESS = 0x8000_0003
    INVALID_FORMAT = 0x8000_0004
    INVALID_PARAMETER = 0x8000_0005
    INVALID_REQUEST = 0x8000_0006
    BUSY = 0x8000_0007
    #: ``PROTOCOL_BASE + n``: protocol-specific codes, e.g. PVALIDATE FAIL_SIZEMISMATCH.
    PROTOCOL_BASE = PROTOCOL_BASE
    PVALIDATE_FAIL_INPUT = PROTOCOL_BASE + 1
    PVALIDATE_FAIL_PERMISSION = PROTOCOL_BASE + 2
    PVALIDATE_FAIL_SIZEMISMATCH = PROTOCOL_BASE + 6
    PVALIDATE_FAIL_UNCHANGED = PROTOCOL_BASE + 0x10


class SvsmError(Exception):
    """Root of every error pysvsm raises on purpose.

    Catch this only at a boundary (dispatch, CLI); elsewhere catch the leaf you
    can handle.
    """


class RequestError(SvsmError):
    """The request was bad; answer it with :attr:`code` and carry on.

    Subclass per result code.  Modules raise these from ``svsm_handle_request``;
    the kernel turns them into RAX for the guest.
    """

    code: int = ResultCode.INVALID_REQUEST

    def __init__(self, message: str = "", *, code: int | None = None) -> None:
        super().__init__(message or type(self).__name__)
        if code is not None:
            self.code = int(code)


class Incomplete(RequestError):
    """The call made progress but must be re-issued (the guest retries)."""

    code = ResultCode.INCOMPLETE


class UnsupportedProtocol(RequestError):
    """No protocol with that number is served (or a quirky per-protocol case)."""

    code = ResultCode.UNSUPPORTED_PROTOCOL


class UnsupportedCall(RequestError):
    """The protocol exists but does not implement that call number."""

    code = ResultCode.UNSUPPORTED_CALL


class InvalidAddress(RequestError):
    """A guest physical address is outside guest memory, misplaced or overlapping."""

    code = ResultCode.INVALID_ADDRESS


class InvalidFormat(RequestError):
    """A guest-supplied structure is malformed."""

    code = ResultCode.INVALID_FORMAT


class InvalidParameter(RequestError):
    """A register or field value is out of range, reserved bits set, etc."""

    code = ResultCode.INVALID_PARAMETER


class InvalidRequest(RequestError):
    """The request is not valid in the current state."""

    code = ResultCode.INVALID_REQUEST


class Busy(RequestError):
    """Try again later (Linux retries BUSY in a loop)."""

    code = ResultCode.BUSY


class ProtocolError(RequestError):
    """A protocol-specific code ``0x8000_1000 + n``.

    :param n: the protocol-specific number (e.g. 6 for FAIL_SIZEMISMATCH).
    """

    def __init__(self, n: int, message: str = "") -> None:
        if not 0 <= n < 0x1000:
            raise ValueError(f"protocol-specific code {n:#x} out of range")
        super().__init__(message or f"protocol error {n:#x}", code=PROTOCOL_BASE + n)
        self.n = n


class FatalError(SvsmError):
    """A broken kernel invariant.  Never caught by request dispatch: it panics the SVSM.

    Whoever catches it (only the panic path and tests) must treat the VM as dead.
    """
