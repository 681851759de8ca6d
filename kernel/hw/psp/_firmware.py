"""The PSP (AMD-SP) firmware model: SNP launch, guest requests, reports and derived keys.

Sans-IO: :meth:`SnpFirmware.launch_update` returns the bytes the firmware places at the
page (the caller -- kernel/hw's launch driver -- writes them through the
firmware-privileged memory/RMP API), and :meth:`SnpFirmware.guest_request` takes the
request page bytes the hypervisor copied out of shared memory and returns the response
page bytes.

Assumptions where snp.md 7 has no confirmed text: a message that fails header checks,
authentication or the sequence check is refused with firmware error INVALID_PARAM (0x16),
and nothing advances; every guest gets a VMRK at launch (no migration agent exists here).
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import logging
import os
import struct
import threading
from collections.abc import Callable
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from svsm.sdk import InvalidRequest
from svsm.sdk.attestation import (
    ARK_GUID,
    ASK_GUID,
    REPORT_SIZE,
    SIGNED_SIZE,
    SNP_KEY_REQ,
    SNP_KEY_RSP,
    SNP_REPORT_REQ,
    SNP_REPORT_RSP,
    SNP_SECRETS_PAGE,
    VCEK_GUID,
    GuestMessageError,
    GuestMessageHeader,
    MsgType,
    TcbLayout,
    build_cert_table,
    build_report_bytes,
    decode_tcb,
    open_message,
    seal_message,
)

from ._chip import Chip
from ._idblock import ID_AUTH, IdBlockError, parse_id_block
from ._measure import VMSA_GPA, LaunchDigest, PageType
from ._vmsa import cpu_sig

__all__ = ["FwError", "GuestContext", "LaunchState", "PspError", "PspStatistics", "SnpFirmware", "VmmError"]

log = logging.getLogger(__name__)
PAGE_SIZE = 4096
SECRETS_PAGE_VERSION = 3


class FwError(enum.IntEnum):
    """SEV firmware status codes (Linux include/uapi/linux/psp-sev.h)."""

    SUCCESS = 0
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INVALID_LEN = 0x04
    POLICY_FAILURE = 0x07
    INVALID_ADDRESS = 0x09
    BAD_SIGNATURE = 0x0A
    BAD_MEASUREMENT = 0x0B
    INVALID_GUEST = 0x10
    INVALID_PARAM = 0x16
    INVALID_KEY = 0x27


class PspError(InvalidRequest):
    """A firmware command failed with :attr:`fw_error` (the value in SW_EXITINFO2[31:0]).

    The hypervisor reports it to the guest; the guest must not retry with the same
    sequence number under the same key.
    """

    def __init__(self, fw_error: FwError, message: str = "") -> None:
        super().__init__(message or fw_error.name)
        self.fw_error = fw_error


class VmmError(InvalidRequest):
    """A hypervisor-side (VMM) error of an extended guest request: SW_EXITINFO2[63:32].

    :ivar vmm_error: 1 INVALID_LEN (``pages_needed`` says how many certificate pages),
        2 BUSY.
    """

    INVALID_LEN = 1
    BUSY = 2

    def __init__(self, vmm_error: int, pages_needed: int = 0) -> None:
        super().__init__(f"VMM error {vmm_error}")
        self.vmm_error = vmm_error
        self.pages_needed = pages_needed


class LaunchState(enum.Enum):
    """Guest context lifecycle."""

    LAUNCHING = "launching"
    RUNNING = "running"
    DECOMMISSIONED = "decommissioned"


#: The whole lifecycle: (state, command) -> next state.  Anything else is INVALID_GUEST_STATE.
TRANSITIONS: dict[tuple[LaunchState, str], LaunchState] = {
    (LaunchState.LAUNCHING, "launch_update"): LaunchState.LAUNCHING,
    (LaunchState.LAUNCHING, "launch_finish"): LaunchState.RUNNING,
    (LaunchState.RUNNING, "guest_request"): LaunchState.RUNNING,
    (LaunchState.LAUNCHING, "decommission"): LaunchState.DECOMMISSIONED,
    (LaunchState.RUNNING, "decommission"): LaunchState.DECOMMISSIONED,
}

# GUEST_FIELD_SELECT bits (snp.md 2.3)
FIELD_POLICY, FIELD_IMAGE_ID, FIELD_FAMILY_ID, FIELD_MEASUREMENT = 1, 2, 4, 8
FIELD_GUEST_SVN, FIELD_TCB_VERSION, FIELD_LAUNCH_MIT_VECTOR = 16, 32, 64
_FIELD_MASK = 0x7F


@dataclasses.dataclass(eq=False)
class GuestContext:
    """Firmware state for one SNP guest (the firmware's GCTX).  Owned by :class:`SnpFirmware`."""

    asid: int
    policy: int
    state: LaunchState
    digest: LaunchDigest
    vmpcks: list[bytes]
    vmrk: bytes
    report_id: bytes
    launch_tcb: int
    #: Per-VMPCK firmware sequence counter: the next request must carry counter + 1.
    seqnos: list[int] = dataclasses.field(default_factory=lambda: [0, 0, 0, 0])
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    measurement: bytes = bytes(48)
    secrets_gpa: int | None = None

    def _step(self, command: str) -> None:
        nxt = TRANSITIONS.get((self.state, command))
        if nxt is None:
            raise PspError(FwError.INVALID_GUEST_STATE, f"{command} in state {self.state.value}")
        self.state = nxt


class PspStatistics(NamedTuple):
    """Counters of :class:`SnpFirmware`."""

    guests: int
    pages_measured: int
    reports: int
    derived_keys: int
    requests_refused: int


class SnpFirmware:
    """The PSP of one simulated chip.

    :param chip: identity and keys (:meth:`Chip.load_or_create`).
    :param report_version: ATTESTATION_REPORT version produced (2, 3 or 5).
    :param platform_info: PLATFORM_INFO of reports (bit 0 SMT_EN by default).
    :param firmware_version: (major, minor, build) reported as current and committed.
    :param reported_tcb: the TCB reports claim and are signed at (SNP_CONFIG's REPORTED_TCB:
        a host may report an older TCB so verifiers keep using an older VCEK); default the
        chip's current TCB.  It may not exceed the current TCB.
    :param mask_chip_id: SNP_CONFIG MASK_CHIP_ID: reports carry a zero CHIP_ID.
    :param mask_chip_key: SNP_CONFIG MASK_CHIP_KEY: reports are not signed (zero signature,
        KEY_INFO MASK_CHIP_KEY = 1, SIGNING_KEY = 7 "none").
    :param rng: randomness for VMPCKs, VMRKs and report IDs (injected).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        chip: Chip,
        *,
        report_version: int = 3,
        platform_info: int = 0x1,
        firmware_version: tuple[int, int, int] = (1, 55, 0),
        reported_tcb: int | None = None,
        mask_chip_id: bool = False,
        mask_chip_key: bool = False,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if report_version not in (2, 3, 5):
            raise ValueError("report_version must be 2, 3 or 5")
        layout = chip.product.layout
        if reported_tcb is not None and any(
            r > c for r, c in zip(decode_tcb(reported_tcb, layout), decode_tcb(chip.raw_tcb, layout))
        ):
            raise ValueError("REPORTED_TCB may not exceed the current TCB")
        #: TCB in REPORTED_TCB; the VCEK for it signs reports and heads the certificate table.
        self.reported_tcb = chip.raw_tcb if reported_tcb is None else reported_tcb
        self.mask_chip_id = mask_chip_id
        self.mask_chip_key = mask_chip_key
        self.chip = chip
        self.report_version = report_version
        self.platform_info = platform_info
        self.firmware_version = firmware_version
        self._rng = rng
        #: Serialises commands: vCPU threads may issue guest requests concurrently.
        self._lock = threading.RLock()
        self._next_asid = 1
        self._reports = self._keys = self._refused = self._pages = self._guests = 0

    # -- launch ---------------------------------------------------------------------------

    def launch_start(self, policy: int = 0x30000) -> GuestContext:
        """SNP_LAUNCH_START: a new guest context with fresh VMPCKs.

        :param policy: guest POLICY (bit 17 must be 1; snp.md 1).
        :raises PspError: INVALID_PARAM for a policy with bit 17 clear or MBZ bits set.
        """
        if not policy & (1 << 17) or policy >> 26:
            raise PspError(FwError.INVALID_PARAM, f"bad guest policy {policy:#x}")
        with self._lock:
            asid, self._next_asid = self._next_asid, self._next_asid + 1
            self._guests += 1
        ctx = GuestContext(
            asid=asid,
            policy=policy,
            state=LaunchState.LAUNCHING,
            digest=LaunchDigest(),
            vmpcks=[self._rng(32) for _ in range(4)],
            vmrk=self._rng(32),
            report_id=self._rng(32),
            launch_tcb=self.chip.raw_tcb,
        )
        return ctx

    def launch_update(self, ctx: GuestContext, page_type: PageType, gpa: int, data: bytes | None = None) -> bytes:
        """SNP_LAUNCH_UPDATE of one page: measure it and return the bytes placed there.

        :param data: the page for NORMAL, VMSA and (optionally) CPUID pages.
        :returns: the 4 KiB the firmware writes at ``gpa`` (the SECRETS page gets VMPCKs).
        :raises PspError: wrong state, misaligned GPA, or bad contents.
        """
        ctx._step("launch_update")
        if gpa % PAGE_SIZE:
            raise PspError(FwError.INVALID_ADDRESS, f"GPA {gpa:#x} not page aligned")
        if page_type in (PageType.NORMAL, PageType.VMSA):
            if data is None or len(data) != PAGE_SIZE:
                raise PspError(FwError.INVALID_PARAM, f"{page_type.name} page needs 4096 bytes")
            ctx.digest.update_page(page_type, VMSA_GPA if page_type is PageType.VMSA else gpa, data)
            out = bytes(data)
        elif page_type is PageType.SECRETS:
            ctx.digest.update_page(page_type, gpa)
            ctx.secrets_gpa = gpa
            out = self._secrets_page(ctx)
        elif page_type is PageType.CPUID:
            ctx.digest.update_page(page_type, gpa)
            out = bytes(data) if data is not None else bytes(PAGE_SIZE)
        else:
            ctx.digest.update_page(page_type, gpa)
            out = bytes(PAGE_SIZE)
        self._pages += 1
        return out

    def launch_update_normal(self, ctx: GuestContext, gpa: int, data: bytes) -> None:
        """SNP_LAUNCH_UPDATE of many consecutive NORMAL pages (the fast path for firmware)."""
        ctx._step("launch_update")
        ctx.digest.update_normal(gpa, data)
        self._pages += len(data) // PAGE_SIZE

    def _secrets_page(self, ctx: GuestContext) -> bytes:
        page = SNP_SECRETS_PAGE(version=SECRETS_PAGE_VERSION, fms=self._fms())
        for i, key in enumerate(ctx.vmpcks):
            ctypes.memmove(getattr(page, f"vmpck{i}"), key, 32)
        return bytes(page)

    def _fms(self) -> int:
        p = self.chip.product
        return cpu_sig(p.family, p.model, p.stepping)

    def launch_finish(
        self,
        ctx: GuestContext,
        *,
        host_data: bytes = bytes(32),
        id_block: bytes | None = None,
        id_auth: bytes | None = None,
        author_key_en: bool | None = None,
        family_id: bytes = bytes(16),
        image_id: bytes = bytes(16),
        guest_svn: int = 0,
    ) -> bytes:
        """SNP_LAUNCH_FINISH: check the ID block (if any), freeze the measurement; the guest may run.

        :param host_data: 32 bytes the host binds to the guest (HOST_DATA in reports).
        :param id_block: the guest owner's signed ID block (:func:`build_id_block`), with
            ``id_auth``; it sets FAMILY_ID, IMAGE_ID, GUEST_SVN and the key digests.
        :param author_key_en: check and report the author key (default: when ``id_auth``
            carries one).
        :param family_id: without an ID block: the (unsigned) IDs and SVN to record.
        :returns: the final MEASUREMENT.
        :raises PspError: BAD_SIGNATURE, BAD_MEASUREMENT, POLICY_FAILURE or INVALID_PARAM for
            a refused ID block (the launch stays unfinished), INVALID_GUEST_STATE.
        """
        if len(host_data) != 32 or len(family_id) != 16 or len(image_id) != 16:
            raise PspError(FwError.INVALID_PARAM, "bad ID or host data size")
        if ctx.state is not LaunchState.LAUNCHING:
            raise PspError(FwError.INVALID_GUEST_STATE, "LAUNCH_FINISH outside a launch")
        measurement = ctx.digest.digest
        id_key_digest = author_key_digest = bytes(48)
        if id_block is not None or id_auth is not None:
            if id_block is None or id_auth is None:
                raise PspError(FwError.INVALID_PARAM, "ID block and ID auth go together")
            if author_key_en is None:
                author_key_en = ID_AUTH.from_buffer_copy(id_auth.ljust(ctypes.sizeof(ID_AUTH), b"\0")).auth_key_algo != 0
            try:
                info = parse_id_block(id_block, id_auth, measurement=measurement, policy=ctx.policy,
                                      author_key_en=author_key_en)  # fmt: skip
            except IdBlockError as exc:
                raise PspError(FwError(exc.status), str(exc)) from exc
            family_id, image_id, guest_svn = info.family_id, info.image_id, info.guest_svn
            id_key_digest, author_key_digest = info.id_key_digest, info.author_key_digest
        ctx._step("launch_finish")
        ctx.host_data, ctx.family_id, ctx.image_id, ctx.guest_svn = host_data, family_id, image_id, guest_svn
        ctx.id_key_digest, ctx.author_key_digest = id_key_digest, author_key_digest
        ctx.measurement = measurement
        return measurement

    def decommission(self, ctx: GuestContext) -> None:
        """SNP_DECOMMISSION: wipe the context's keys; further requests fail."""
        ctx._step("decommission")
        ctx.vmpcks = [bytes(32)] * 4
        ctx.vmrk = bytes(32)

    # -- guest requests -------------------------------------------------------------------

    def guest_request(self, ctx: GuestContext, request_page: bytes) -> bytes:
        """SNP_GUEST_REQUEST: the entry the hypervisor calls with the request page bytes.

        :param request_page: the 4 KiB request message page (copied from shared memory).
        :returns: the 4 KiB response message page.
        :raises PspError: INVALID_GUEST_STATE before LAUNCH_FINISH; INVALID_PARAM for a
            malformed, unauthenticated, replayed or out-of-order message (nothing advances).
        """
        with self._lock:
            return self._guest_request(ctx, request_page)

    def _guest_request(self, ctx: GuestContext, request_page: bytes) -> bytes:
        ctx._step("guest_request")
        try:
            hdr, payload = self._open(ctx, request_page)
        except (GuestMessageError, PspError) as exc:
            self._refused += 1
            log.info("guest request refused: %s", exc)
            raise PspError(FwError.INVALID_PARAM, "guest message rejected") from exc
        vmpl = hdr.msg_vmpck
        if hdr.msg_type == MsgType.REPORT_REQ:
            rsp = self._report(ctx, vmpl, payload)
        elif hdr.msg_type == MsgType.KEY_REQ:
            rsp = self._derive_key(ctx, vmpl, payload)
        else:
            self._refused += 1
            raise PspError(FwError.INVALID_PARAM, f"unsupported message type {hdr.msg_type}")
        ctx.seqnos[vmpl] += 2
        return seal_message(ctx.vmpcks[vmpl], seqno=hdr.msg_seqno + 1, msg_type=hdr.msg_type + 1, vmpck=vmpl,
                            payload=rsp, msg_version=hdr.msg_version)  # fmt: skip

    def _open(self, ctx: GuestContext, page: bytes) -> tuple[GuestMessageHeader, bytes]:
        hdr = GuestMessageHeader.from_bytes(page)
        key = ctx.vmpcks[hdr.msg_vmpck]
        if not any(key):
            raise PspError(FwError.INVALID_PARAM, f"VMPCK{hdr.msg_vmpck} is disabled")
        if hdr.msg_seqno != ctx.seqnos[hdr.msg_vmpck] + 1:
            raise PspError(FwError.INVALID_PARAM, "unexpected sequence number")
        return open_message(key, page)

    def ext_guest_request(self, ctx: GuestContext, request_page: bytes, cert_pages: int) -> tuple[bytes, bytes]:
        """SNP extended guest request: the response plus the certificate table.

        :param cert_pages: size of the guest's certificate buffer in pages (RBX).
        :returns: (response page, certificate table padded to whole pages).
        :raises VmmError: INVALID_LEN with :attr:`VmmError.pages_needed` when the buffer
            is too small (the request is not consumed, so the guest can retry).
        """
        table = self.certificate_table()
        needed = -(-len(table) // PAGE_SIZE)
        if cert_pages < needed:
            raise VmmError(VmmError.INVALID_LEN, needed)
        return self.guest_request(ctx, request_page), table + bytes(needed * PAGE_SIZE - len(table))

    def certificate_table(self) -> bytes:
        """VCEK, ASK and ARK (DER) in the snp.md 2.4 table format."""
        ark, ask, vcek = self.chip.chain_der(self.reported_tcb)
        return build_cert_table({VCEK_GUID: vcek, ASK_GUID: ask, ARK_GUID: ark})

    # -- MSG_REPORT_REQ -------------------------------------------------------------------

    def _report(self, ctx: GuestContext, caller_vmpl: int, payload: bytes) -> bytes:
        if len(payload) != ctypes.sizeof(SNP_REPORT_REQ):
            return bytes(SNP_REPORT_RSP(status=FwError.INVALID_PARAM))
        req = SNP_REPORT_REQ.from_buffer_copy(payload)
        key_sel = req.flags & 3
        if req.flags >> 2 or any(req.reserved) or not caller_vmpl <= req.vmpl <= 3 or key_sel == 3:
            return bytes(SNP_REPORT_RSP(status=FwError.INVALID_PARAM))
        if key_sel == 2:  # VLEK requested, none installed
            return bytes(SNP_REPORT_RSP(status=FwError.INVALID_KEY))
        report = self.build_report(ctx, bytes(req.report_data), req.vmpl)
        rsp = SNP_REPORT_RSP(status=0, report_size=REPORT_SIZE)
        ctypes.memmove(rsp.report, report, REPORT_SIZE)
        self._reports += 1
        return bytes(rsp)

    def build_report(self, ctx: GuestContext, report_data: bytes, vmpl: int) -> bytes:
        """Lay out and sign an ATTESTATION_REPORT for ``ctx`` (used by MSG_REPORT_REQ)."""
        if ctx.state is not LaunchState.RUNNING:
            raise PspError(FwError.INVALID_GUEST_STATE, "report before LAUNCH_FINISH")
        p = self.chip.product
        major, minor, build = self.firmware_version
        tcb = self.chip.raw_tcb
        fields: dict[str, object] = dict(
            version=self.report_version, guest_svn=ctx.guest_svn, policy=ctx.policy,
            family_id=ctx.family_id, image_id=ctx.image_id, vmpl=vmpl, signature_algo=1,
            current_tcb=tcb, platform_info=self.platform_info,
            key_info=(1 if any(ctx.author_key_digest) else 0) | (2 | 7 << 2 if self.mask_chip_key else 0),
            report_data=report_data, measurement=ctx.measurement, host_data=ctx.host_data,
            id_key_digest=ctx.id_key_digest, author_key_digest=ctx.author_key_digest,
            report_id=ctx.report_id, report_id_ma=b"\xff" * 32, reported_tcb=self.reported_tcb,
            chip_id=bytes(64) if self.mask_chip_id else self.chip.chip_id, committed_tcb=tcb, launch_tcb=ctx.launch_tcb,
            current_build=build, current_minor=minor, current_major=major,
            committed_build=build, committed_minor=minor, committed_major=major,
        )  # fmt: skip
        if self.report_version >= 3:
            fields.update(cpuid_fam_id=p.family, cpuid_mod_id=p.model, cpuid_step=p.stepping)
        unsigned = build_report_bytes(**fields)
        if self.mask_chip_key:
            return unsigned  # no signature: zeros (snp.md 1)
        key, _ = self.chip.vcek(self.reported_tcb)
        r, s = decode_dss_signature(key.sign(unsigned[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
        return build_report_bytes(**fields, signature_r=r, signature_s=s)

    # -- MSG_KEY_REQ ----------------------------------------------------------------------

    def _derive_key(self, ctx: GuestContext, caller_vmpl: int, payload: bytes) -> bytes:
        bad = bytes(SNP_KEY_RSP(status=FwError.INVALID_PARAM))
        if len(payload) not in (32, ctypes.sizeof(SNP_KEY_REQ)):
            return bad
        req = SNP_KEY_REQ.from_buffer_copy(payload + bytes(ctypes.sizeof(SNP_KEY_REQ) - len(payload)))
        select = req.guest_field_select
        if req.root_key_select >> 1 or req.reserved or select & ~_FIELD_MASK:
            return bad
        if len(payload) == 32 and select & FIELD_LAUNCH_MIT_VECTOR:
            return bad
        if not caller_vmpl <= req.vmpl <= 3 or req.guest_svn > ctx.guest_svn:
            return bad
        layout = self.chip.product.layout
        asked, committed = decode_tcb(req.tcb_version, layout), decode_tcb(self.chip.raw_tcb, layout)
        if any(a > c for a, c in zip(asked, committed)) or req.tcb_version & ~_tcb_mask(layout):
            return bad
        root = ctx.vmrk if req.root_key_select & 1 else self.chip.key_derivation_root()
        info = bytearray(b"pysvsm SNP derived key v1")
        info += struct.pack("<IQ", req.vmpl, select)
        for bit, value in (
            (FIELD_POLICY, struct.pack("<Q", ctx.policy)),
            (FIELD_IMAGE_ID, ctx.image_id),
            (FIELD_FAMILY_ID, ctx.family_id),
            (FIELD_MEASUREMENT, ctx.measurement),
            (FIELD_GUEST_SVN, struct.pack("<I", req.guest_svn)),
            (FIELD_TCB_VERSION, struct.pack("<Q", req.tcb_version)),
            (FIELD_LAUNCH_MIT_VECTOR, struct.pack("<Q", req.launch_mit_vector)),
        ):
            if select & bit:
                info += value
        key = HKDF(algorithm=hashes.SHA384(), length=32, salt=None, info=bytes(info)).derive(root)
        rsp = SNP_KEY_RSP(status=0)
        ctypes.memmove(rsp.derived_key, key, 32)
        self._keys += 1
        return bytes(rsp)

    def statistics(self) -> PspStatistics:
        """Counters since creation."""
        return PspStatistics(self._guests, self._pages, self._reports, self._keys, self._refused)


def _tcb_mask(layout: TcbLayout) -> int:
    """Bytes of TCB_VERSION that carry SPLs (the rest are reserved and must be zero)."""
    used = (0, 1, 2, 3, 7) if layout is TcbLayout.TURIN else (0, 1, 6, 7)
    return sum(0xFF << (8 * i) for i in used)

