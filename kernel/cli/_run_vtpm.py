"""The vTPM part of ``svsm run``'s guest workload (split from run.py to keep that file small).

Guest-OS code, as a Linux guest with ``tpm_svsm`` would do it: the guest's TPM driver
(:class:`svsm.sdk.tpm.VtpmDriver`, SVSM_VTPM_CMD through the SVSM to the vTPM module) sends
TPM2_Startup, TPM2_GetRandom, TPM2_PCR_Read + TPM2_PCR_Extend + TPM2_PCR_Read on PCR 16, and
TPM2_CreatePrimary(TPM_RH_ENDORSEMENT) with the TCG EK template L-1.  The EK's TPMT_PUBLIC must
equal the vTPM entry of the attested services manifest (coconut-svsm.md 5.2): that is what makes
the SVSM's VCEK-signed report bind the EK.

The command and response layouts are TPM 2.0 Part 3 (big-endian); each is declared here once.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

from svsm.sdk import SvsmError

__all__ = ["EK_TEMPLATE_RSA2048", "VtpmCheckFailed", "vtpm_workload"]

#: Command/response header: tag, size, command code / response code.
_HDR = struct.Struct(">HII")
assert _HDR.size == 10
_TAG_NO_SESSIONS, _TAG_SESSIONS = 0x8001, 0x8002
_CC_STARTUP, _CC_GET_RANDOM, _CC_PCR_READ, _CC_PCR_EXTEND = 0x144, 0x17B, 0x17E, 0x182
_CC_CREATE_PRIMARY, _CC_FLUSH_CONTEXT = 0x131, 0x165
_RC_SUCCESS, _RC_INITIALIZE = 0x000, 0x100
_SU_CLEAR = 0x0000
_RH_ENDORSEMENT, _RS_PW = 0x4000000B, 0x40000009
_ALG_SHA256 = 0x000B
_U16, _U32 = struct.Struct(">H"), struct.Struct(">I")
#: One password session with an empty password: authorizationSize, then TPMS_AUTH_COMMAND
#: (sessionHandle, nonce size 0, attributes 0, hmac size 0).
_PW_AUTH = _U32.pack(9) + struct.pack(">IHBH", _RS_PW, 0, 0, 0)
assert len(_PW_AUTH) == 13
#: PCR the workload extends (16: the debug PCR, resettable, no policy on it).
_PCR = 16
#: TPML_PCR_SELECTION selecting PCR 16 of the SHA-256 bank (count, hash, sizeofSelect, pcrSelect).
_PCR_SELECT = _U32.pack(1) + struct.pack(">HB", _ALG_SHA256, 3) + bytes([0, 0, 1 << (_PCR - 16)])
assert len(_PCR_SELECT) == 10
#: TCG EK Credential Profile PolicyA: PolicySecret(TPM_RH_ENDORSEMENT), SHA-256.
_POLICY_A = bytes.fromhex("837197674484B3F81A90CC8D46A5D724FD52D76E06520B64F2A1DA1B331469AA")
#: TCG default EK template L-1 (RSA 2048) as a marshalled TPMT_PUBLIC: type RSA, nameAlg SHA-256,
#: objectAttributes 0x000300B2, authPolicy = PolicyA, AES-128-CFB, scheme NULL, 2048 bits,
#: exponent 0, unique = 256 zero bytes.
EK_TEMPLATE_RSA2048 = (
    struct.pack(">HHI", 0x0001, _ALG_SHA256, 0x000300B2) + _U16.pack(32) + _POLICY_A
    + struct.pack(">HHH", 0x0006, 128, 0x0043) + _U16.pack(0x0010) + struct.pack(">HI", 2048, 0)
    + _U16.pack(256) + bytes(256)
)  # fmt: skip
assert len(EK_TEMPLATE_RSA2048) == 314


class VtpmCheckFailed(SvsmError):
    """The vTPM answered with an error, or its EK is not the one the manifest attests.

    ``svsm run`` reports it and exits with FAILED.
    """


def _command(driver: Any, tag: int, cc: int, body: bytes, *, accept: tuple[int, ...] = (_RC_SUCCESS,)) -> tuple[int, bytes]:
    resp = driver.execute(_HDR.pack(tag, _HDR.size + len(body), cc) + body)
    if len(resp) < _HDR.size:
        raise VtpmCheckFailed(f"TPM command {cc:#x}: short response ({len(resp)} bytes)")
    _, size, rc = _HDR.unpack_from(resp)
    if size != len(resp) or rc not in accept:
        raise VtpmCheckFailed(f"TPM command {cc:#x} failed: rc={rc:#x}")
    return rc, resp[_HDR.size :]


def _pcr_read(driver: Any) -> bytes:
    _, body = _command(driver, _TAG_NO_SESSIONS, _CC_PCR_READ, _PCR_SELECT)
    off = 4 + len(_PCR_SELECT)  # pcrUpdateCounter, pcrSelectionOut
    count = _U32.unpack_from(body, off)[0]
    size = _U16.unpack_from(body, off + 4)[0] if count else 0
    if count != 1 or size != 32:
        raise VtpmCheckFailed(f"PCR_Read returned {count} digests of {size} bytes")
    return body[off + 6 : off + 6 + 32]


def vtpm_workload(guest: Any, manifest_services: Any, vtpm_guid: Any) -> dict[str, Any]:
    """Drive the vTPM through the SVSM from ``guest`` and check its EK against the manifest.

    :param guest: the guest OS driver (:class:`svsm.sdk.guest.Guest`).
    :param manifest_services: ``(GUID, data)`` pairs of the attested services manifest.
    :param vtpm_guid: the vTPM's service GUID.
    :returns: what ``svsm run`` shows (``startup``, ``random_bytes``, ``pcr16_extended``,
        ``ek_matches_manifest``, ``ek_sha256``, ``commands``).
    :raises VtpmCheckFailed: a command failed, PCR 16 did not extend, or the EK differs.
    :raises RequestError: the SVSM refused an SVSM_VTPM_CMD call.
    """
    from svsm.sdk.tpm import VtpmDriver

    driver = VtpmDriver(guest)
    try:
        rc, _ = _command(driver, _TAG_NO_SESSIONS, _CC_STARTUP, _U16.pack(_SU_CLEAR), accept=(_RC_SUCCESS, _RC_INITIALIZE))
        _, body = _command(driver, _TAG_NO_SESSIONS, _CC_GET_RANDOM, _U16.pack(16))
        n_random = _U16.unpack_from(body)[0]
        if n_random != 16 or len(body) != 2 + n_random:
            raise VtpmCheckFailed(f"GetRandom(16) returned {n_random} bytes")
        before = _pcr_read(driver)
        digest = hashlib.sha256(b"svsm run").digest()
        extend = _U32.pack(_PCR) + _PW_AUTH + _U32.pack(1) + _U16.pack(_ALG_SHA256) + digest
        _command(driver, _TAG_SESSIONS, _CC_PCR_EXTEND, extend)
        after = _pcr_read(driver)
        if after != hashlib.sha256(before + digest).digest():
            raise VtpmCheckFailed("PCR 16 is not SHA-256(old || digest) after PCR_Extend")
        create = (_U32.pack(_RH_ENDORSEMENT) + _PW_AUTH + struct.pack(">HHH", 4, 0, 0)
                  + _U16.pack(len(EK_TEMPLATE_RSA2048)) + EK_TEMPLATE_RSA2048 + _U16.pack(0) + _U32.pack(0))  # fmt: skip
        _, body = _command(driver, _TAG_SESSIONS, _CC_CREATE_PRIMARY, create)
        handle, _params = struct.unpack_from(">II", body)
        size = _U16.unpack_from(body, 8)[0]
        ek_public = body[10 : 10 + size]
        _command(driver, _TAG_NO_SESSIONS, _CC_FLUSH_CONTEXT, _U32.pack(handle))
        attested = dict(manifest_services).get(vtpm_guid)
        if attested is None:
            raise VtpmCheckFailed("the attested services manifest has no vTPM entry")
        if not hmac.compare_digest(attested, ek_public):
            raise VtpmCheckFailed("the vTPM's EK differs from the EK in the attested services manifest")
        return {
            "startup": "started" if rc == _RC_SUCCESS else "already started",
            "random_bytes": n_random,
            "pcr16_extended": True,
            "ek_matches_manifest": True,
            "ek_sha256": hashlib.sha256(ek_public).hexdigest(),
            "commands": driver.statistics().commands,
        }
    finally:
        driver.close()
