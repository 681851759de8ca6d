"""The SVSM vTPM protocol buffer (coconut-svsm.md 2.5, tpm.md 1.3), shared by guest and module.

One 4096-byte guest buffer carries both directions.  The platform fields are
**little-endian** (Linux ``tpm_svsm.h`` writes ``req->cmd = 8`` natively; COCONUT reads a
packed native u32); the TPM command inside stays big-endian.  The guest driver encodes
requests and decodes responses; the vTPM module decodes requests and encodes responses.
"""

from __future__ import annotations

import dataclasses
import struct

from .._errors import InvalidParameter
from ..guest._abi import SVSM_VTPM_PROTOCOL
from ._errors import TransportError

__all__ = [
    "SVSM_VTPM_PROTOCOL",
    "SVSM_VTPM_QUERY",
    "SVSM_VTPM_CMD",
    "TPM_SEND_COMMAND",
    "VTPM_BUFFER_SIZE",
    "VTPM_MAX_COMMAND",
    "VTPM_MAX_RESPONSE",
    "VTPM_QUERY_PLATFORM_COMMANDS",
    "VTPM_QUERY_FEATURES",
    "VTPM_REQUEST_HEADER",
    "VTPM_RESPONSE_HEADER",
    "VtpmRequest",
    "encode_vtpm_request",
    "decode_vtpm_request",
    "encode_vtpm_response",
    "decode_vtpm_response",
]

#: Call 0: RCX <- supported platform commands, RDX <- features.
SVSM_VTPM_QUERY = 0
#: Call 1: RCX = GPA of the 4096-byte buffer.
SVSM_VTPM_CMD = 1
#: The only platform command: TPM_SEND_COMMAND (mssim numbering).
TPM_SEND_COMMAND = 8
VTPM_BUFFER_SIZE = 4096
#: SVSM_VTPM_QUERY answer: bitmap with bit 8 (TPM_SEND_COMMAND) only; features 0.
VTPM_QUERY_PLATFORM_COMMANDS = 1 << TPM_SEND_COMMAND
VTPM_QUERY_FEATURES = 0

#: Request: u32 cmd @0x0, u8 locality @0x4, u32 inbuf_size @0x5 (packed, little-endian).
VTPM_REQUEST_HEADER = struct.Struct("<IBI")
assert VTPM_REQUEST_HEADER.size == 9
assert struct.calcsize("<I") == 0x4 and struct.calcsize("<IB") == 0x5  # offsets of locality, inbuf_size
#: Response: u32 outbuf_size @0x0, response @0x4.
VTPM_RESPONSE_HEADER = struct.Struct("<I")
assert VTPM_RESPONSE_HEADER.size == 4
#: Largest TPM command / response that fits the page: 4087 and 4092 bytes.
VTPM_MAX_COMMAND = VTPM_BUFFER_SIZE - VTPM_REQUEST_HEADER.size
VTPM_MAX_RESPONSE = VTPM_BUFFER_SIZE - VTPM_RESPONSE_HEADER.size
assert (VTPM_MAX_COMMAND, VTPM_MAX_RESPONSE) == (4087, 4092)


@dataclasses.dataclass(frozen=True)
class VtpmRequest:
    """A decoded SVSM_VTPM_CMD request."""

    locality: int
    command: bytes


def encode_vtpm_request(command: bytes, locality: int = 0) -> bytes:
    """The request bytes (header + command, not padded) the guest writes at the buffer's GPA.

    :raises InvalidParameter: the command exceeds 4087 bytes or locality is not a byte.

    .. versionadded:: 0.1
    """
    if len(command) > VTPM_MAX_COMMAND:
        raise InvalidParameter(f"TPM command of {len(command)} bytes exceeds {VTPM_MAX_COMMAND}")
    if not 0 <= locality <= 0xFF:
        raise InvalidParameter(f"locality {locality} is not a byte")
    return VTPM_REQUEST_HEADER.pack(TPM_SEND_COMMAND, locality, len(command)) + command


def decode_vtpm_request(buf: bytes | bytearray | memoryview) -> VtpmRequest:
    """Parse the request page the way COCONUT's ``vtpm.rs`` does.

    :param buf: the 4096 bytes copied from the guest (a shorter buffer is tolerated for tests
        as long as it holds the header and the command).
    :raises InvalidParameter: platform command not 8, locality not 0, inbuf_size > 4087, or
        the buffer is shorter than the header plus the command (SVSM_ERR_INVALID_PARAMETER).

    .. versionadded:: 0.1
    """
    if len(buf) < VTPM_REQUEST_HEADER.size:
        raise InvalidParameter("vTPM buffer shorter than its 9-byte header")
    cmd, locality, size = VTPM_REQUEST_HEADER.unpack_from(buf, 0)
    if cmd != TPM_SEND_COMMAND:
        raise InvalidParameter(f"vTPM platform command {cmd} is not TPM_SEND_COMMAND")
    if locality != 0:
        raise InvalidParameter(f"vTPM locality {locality} is not 0")
    if size > VTPM_MAX_COMMAND or VTPM_REQUEST_HEADER.size + size > len(buf):
        raise InvalidParameter(f"vTPM inbuf_size {size} does not fit the buffer")
    start = VTPM_REQUEST_HEADER.size
    return VtpmRequest(locality, bytes(buf[start : start + size]))


def encode_vtpm_response(response: bytes) -> bytes:
    """The response bytes (``u32 LE size`` + response) written back over the buffer.

    :raises TransportError: the response exceeds 4092 bytes; the engine must keep its
        responses within the page (tpm.md 1.3), so the module should fail the call.

    .. versionadded:: 0.1
    """
    if len(response) > VTPM_MAX_RESPONSE:
        raise TransportError(f"TPM response of {len(response)} bytes exceeds {VTPM_MAX_RESPONSE}")
    return VTPM_RESPONSE_HEADER.pack(len(response)) + response


def decode_vtpm_response(buf: bytes | bytearray | memoryview) -> bytes:
    """The TPM response from the buffer the SVSM wrote back (guest side; untrusted).

    :raises TransportError: outbuf_size > 4092 or beyond the buffer.

    .. versionadded:: 0.1
    """
    if len(buf) < VTPM_RESPONSE_HEADER.size:
        raise TransportError("vTPM response buffer shorter than its 4-byte header")
    (size,) = VTPM_RESPONSE_HEADER.unpack_from(buf, 0)
    start = VTPM_RESPONSE_HEADER.size
    if size > VTPM_MAX_RESPONSE or start + size > len(buf):
        raise TransportError(f"vTPM outbuf_size {size} does not fit the buffer")
    return bytes(buf[start : start + size])
