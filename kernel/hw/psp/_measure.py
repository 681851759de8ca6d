"""The SNP launch digest: PAGE_INFO chaining and QEMU's launch order (snp.md 3.1-3.2).

``LD_new = SHA-384(PAGE_INFO)`` once per 4 KiB page, where PAGE_INFO carries the current
digest, the page's SHA-384 (NORMAL and VMSA pages; zero otherwise), its type and GPA.  The
final value is the report's MEASUREMENT.  :func:`launch_plan` lists the updates QEMU makes
for an OVMF image, so the launch path and ``svsm measure`` share one ordering.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import struct
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ._hashes import SevHashes
from ._ovmf import FirmwareImage, FirmwareImageError, SectionType
from ._vmsa import VmmType, build_reset_vmsa, build_svsm_vmsa

__all__ = [
    "BSP_EIP",
    "LaunchDigest",
    "LaunchUpdate",
    "PAGE_INFO",
    "PageType",
    "VMSA_GPA",
    "calc_launch_digest",
    "launch_plan",
    "svsm_launch_plan",
]

PAGE_SIZE = 4096
#: GPA recorded for VMSA pages: (u64)-1, page aligned, bits above 51 cleared (snp.md 3.1).
VMSA_GPA = 0xFFFF_FFFF_F000
#: Reset EIP of the bootstrap processor.
BSP_EIP = 0xFFFF_FFF0
DIGEST_SIZE = 48
_ZERO48 = bytes(DIGEST_SIZE)


class PageType(enum.IntEnum):
    """SNP_LAUNCH_UPDATE page types (snp.md 3.1)."""

    NORMAL = 0x01
    VMSA = 0x02
    ZERO = 0x03
    UNMEASURED = 0x04
    SECRETS = 0x05
    CPUID = 0x06


#: PAGE_INFO (SNP ABI 8.17.2), 0x70 bytes: DIGEST_CUR[48], CONTENTS[48], LENGTH u16,
#: PAGE_TYPE u8, IMI_PAGE u8, VMPL3_PERMS u8, VMPL2_PERMS u8, VMPL1_PERMS u8, reserved u8, GPA u64.
PAGE_INFO = struct.Struct("<48s48sHBBBBBBQ")
PAGE_INFO_LENGTH = 0x70
assert PAGE_INFO.size == PAGE_INFO_LENGTH
for _fmt, _off in (("<48s48s", 0x60), ("<48s48sH", 0x62), ("<48s48sHB", 0x63), ("<48s48sHBB", 0x64),
                   ("<48s48sHBBBBB", 0x67), ("<48s48sHBBBBBB", 0x68)):  # fmt: skip
    assert struct.calcsize(_fmt) == _off


#: Runs of NORMAL pages at least this long hash their pages on worker threads.
PARALLEL_MIN = 1 << 20
#: Pages per worker task (large enough that task overhead is noise).
_CHUNK = 64 * PAGE_SIZE


@functools.lru_cache(maxsize=4)
def _executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="psp-measure")


def _page_digests(view: memoryview) -> list[bytes]:
    """SHA-384 of each 4 KiB page of ``view`` (hashlib drops the GIL for each page)."""
    sha384 = hashlib.sha384
    return [sha384(view[off : off + PAGE_SIZE]).digest() for off in range(0, len(view), PAGE_SIZE)]


class LaunchDigest:
    """A running launch digest.  Feed pages in launch order; read :attr:`digest`.

    Page contents hash independently of the chain, so with ``workers > 1`` long NORMAL runs
    hash their pages on worker threads (hashlib drops the GIL) while this thread chains the
    PAGE_INFOs in order; the result is the same as the serial loop (tested).  Serial is the
    default: on a loaded machine the threads cost more than they give (bench/_launch.py).

    :param seed: starting value (48 zero bytes, or a precomputed firmware digest as
        ``--snp-ovmf-hash`` does).
    :param workers: threads for page hashing (1 = serial, the default).
    """

    __slots__ = ("_ld", "pages", "workers")

    def __init__(self, seed: bytes = _ZERO48, *, workers: int | None = None) -> None:
        if len(seed) != DIGEST_SIZE:
            raise ValueError("launch digest seed must be 48 bytes")
        self._ld = bytes(seed)
        #: Number of pages measured so far.
        self.pages = 0
        self.workers = max(1, workers if workers is not None else 1)

    @property
    def digest(self) -> bytes:
        """The current 48-byte digest."""
        return self._ld

    def update_page(self, page_type: PageType, gpa: int, contents: bytes | memoryview | None = None) -> None:
        """Measure one page.

        :param contents: the 4 KiB page for NORMAL and VMSA pages; ``None`` otherwise.
        :raises ValueError: contents missing, misplaced or of the wrong size.
        """
        if page_type in (PageType.NORMAL, PageType.VMSA):
            if contents is None or len(contents) != PAGE_SIZE:
                raise ValueError(f"{page_type.name} page needs 4096 bytes of contents")
            digest = hashlib.sha384(contents).digest()
        else:
            if contents is not None:
                raise ValueError(f"{page_type.name} pages are measured without contents")
            digest = _ZERO48
        if gpa % PAGE_SIZE:
            raise ValueError(f"GPA {gpa:#x} is not page aligned")
        self._ld = hashlib.sha384(PAGE_INFO.pack(self._ld, digest, PAGE_INFO_LENGTH, page_type, 0, 0, 0, 0, 0, gpa)).digest()
        self.pages += 1

    def update_normal(self, gpa: int, data: bytes | memoryview) -> None:
        """Measure ``data`` (a multiple of 4 KiB) as consecutive NORMAL pages from ``gpa``.

        The hot path of a launch: one loop with the names bound locally, no per-page checks.
        """
        if len(data) % PAGE_SIZE or gpa % PAGE_SIZE:
            raise ValueError("NORMAL data must be whole, aligned pages")
        sha384, pack, ld = hashlib.sha384, PAGE_INFO.pack, self._ld
        view = memoryview(data)
        normal = int(PageType.NORMAL)
        if self.workers > 1 and len(data) >= PARALLEL_MIN:
            pool = _executor(self.workers)
            chunks = [pool.submit(_page_digests, view[o : o + _CHUNK]) for o in range(0, len(data), _CHUNK)]
            page_gpa = gpa
            for fut in chunks:
                for contents in fut.result():
                    ld = sha384(pack(ld, contents, PAGE_INFO_LENGTH, normal, 0, 0, 0, 0, 0, page_gpa)).digest()
                    page_gpa += PAGE_SIZE
        else:
            for off in range(0, len(data), PAGE_SIZE):
                contents = sha384(view[off : off + PAGE_SIZE]).digest()
                ld = sha384(pack(ld, contents, PAGE_INFO_LENGTH, normal, 0, 0, 0, 0, 0, gpa + off)).digest()
        self._ld = ld
        self.pages += len(data) // PAGE_SIZE

    def update_empty(self, page_type: PageType, gpa: int, size: int) -> None:
        """Measure the pages covering ``[gpa, gpa + size)`` as contents-less pages."""
        if page_type in (PageType.NORMAL, PageType.VMSA):
            raise ValueError("NORMAL and VMSA pages need contents")
        for page_gpa in range(gpa, gpa + size, PAGE_SIZE):
            self.update_page(page_type, page_gpa)

    def apply(self, updates: Iterable[LaunchUpdate]) -> bytes:
        """Measure a whole plan; returns the digest."""
        for u in updates:
            if u.page_type is PageType.NORMAL:
                self.update_normal(u.gpa, u.data)  # type: ignore[arg-type]
            elif u.page_type is PageType.VMSA:
                self.update_page(PageType.VMSA, VMSA_GPA, u.data)
            else:
                self.update_empty(u.page_type, u.gpa, u.size)
        return self._ld


@dataclasses.dataclass(frozen=True, slots=True)
class LaunchUpdate:
    """One SNP_LAUNCH_UPDATE: a run of pages of one type.

    ``data`` holds the contents for NORMAL and VMSA updates (a multiple of 4 KiB);
    ``vcpu`` names the vCPU a VMSA belongs to.
    """

    page_type: PageType
    gpa: int
    size: int
    data: bytes | None = None
    vcpu: int | None = None


def launch_plan(
    image: FirmwareImage,
    *,
    vcpus: int,
    vcpu_sig: int,
    guest_features: int = 0x1,
    hashes: SevHashes | None = None,
    include_firmware: bool = True,
    vmm_type: VmmType = VmmType.QEMU,
    vmsas: bool = True,
) -> list[LaunchUpdate]:
    """The updates a VMM issues to launch ``image`` (snp.md 3.2, ``--mode snp``).

    QEMU by default; GCE measures SNP_SEC_MEM as UNMEASURED pages, EC2 moves the CPUID pages
    after all other sections (and both use their own reset VMSAs, see :func:`build_reset_vmsa`).

    :param vcpus: number of vCPUs (one VMSA each).
    :param vcpu_sig: CPUID 1 EAX of the vCPU model.
    :param guest_features: SEV_FEATURES of every VMSA.
    :param hashes: kernel/initrd/cmdline digests for measured direct boot.
    :param include_firmware: False when the caller seeds the digest with a firmware hash.
    :param vmm_type: whose launch to reproduce.
    :param vmsas: False to stop after the metadata sections (callers adding their own VMSAs).
    :raises FirmwareImageError: no SEV-ES reset block with vcpus > 1 (or none at all), a
        kernel given for an image without a kernel-hashes section, or a bad section size.
    """
    if vcpus < 1:
        raise ValueError("at least one vCPU")
    plan: list[LaunchUpdate] = []
    if include_firmware:
        plan.append(LaunchUpdate(PageType.NORMAL, image.gpa, len(image.data), image.data))
    has_hash_section = False
    sec_mem = PageType.UNMEASURED if vmm_type is VmmType.GCE else PageType.ZERO
    for sec in image.sections:
        if sec.type is SectionType.SNP_SEC_MEM:
            plan.append(LaunchUpdate(sec_mem, sec.gpa, sec.size))
        elif sec.type is SectionType.SVSM_CAA:
            plan.append(LaunchUpdate(PageType.ZERO, sec.gpa, sec.size))
        elif sec.type is SectionType.SNP_SECRETS:
            plan.append(LaunchUpdate(PageType.SECRETS, sec.gpa, PAGE_SIZE))
        elif sec.type is SectionType.CPUID:
            if vmm_type is not VmmType.EC2:
                plan.append(LaunchUpdate(PageType.CPUID, sec.gpa, PAGE_SIZE))
        else:  # SNP_KERNEL_HASHES
            has_hash_section = True
            if hashes is None:
                plan.append(LaunchUpdate(PageType.ZERO, sec.gpa, sec.size))
                continue
            table_gpa = image.kernel_hashes_gpa
            if not table_gpa:
                raise FirmwareImageError("image has a kernel-hashes section but no hash table GPA")
            if sec.size != PAGE_SIZE:
                raise FirmwareImageError(f"kernel-hashes section is {sec.size:#x} bytes, expected one page")
            plan.append(LaunchUpdate(PageType.NORMAL, sec.gpa, PAGE_SIZE, hashes.page(table_gpa & (PAGE_SIZE - 1))))
    if vmm_type is VmmType.EC2:
        plan += [LaunchUpdate(PageType.CPUID, s.gpa, PAGE_SIZE) for s in image.sections if s.type is SectionType.CPUID]
    if hashes is not None and not has_hash_section:
        raise FirmwareImageError("a kernel was given but the firmware has no SNP_KERNEL_HASHES section")
    if not vmsas:
        return plan
    ap_eip = image.sev_es_reset_eip  # raises for images without the reset block, as QEMU does
    bsp = build_reset_vmsa(BSP_EIP, vcpu_sig, guest_features, vmm_type)
    ap = build_reset_vmsa(ap_eip, vcpu_sig, guest_features, vmm_type) if vcpus > 1 else b""
    for i in range(vcpus):
        plan.append(LaunchUpdate(PageType.VMSA, VMSA_GPA, PAGE_SIZE, bsp if i == 0 else ap, vcpu=i))
    return plan


def svsm_launch_plan(ovmf: FirmwareImage, svsm: FirmwareImage, *, vcpus: int, vcpu_sig: int) -> list[LaunchUpdate]:
    """sev-snp-measure's ``--mode snp:svsm`` (snp.md 3.4): OVMF pages, SVSM pages, the SVSM
    image's metadata sections only, then one identical SVSM VMSA per vCPU.

    :param svsm: parsed with ``end_at`` = OVMF's GPA minus the OVMF vars size.
    :raises FirmwareImageError: the SVSM image has no SVSM_INFO entry.
    """
    if vcpus < 1:
        raise ValueError("at least one vCPU")
    eip = svsm.svsm_entry
    plan = [LaunchUpdate(PageType.NORMAL, ovmf.gpa, len(ovmf.data), ovmf.data),
            LaunchUpdate(PageType.NORMAL, svsm.gpa, len(svsm.data), svsm.data)]  # fmt: skip
    plan += launch_plan(svsm, vcpus=1, vcpu_sig=vcpu_sig, include_firmware=False, vmsas=False)
    vmsa = build_svsm_vmsa(eip, vcpu_sig)
    plan += [LaunchUpdate(PageType.VMSA, VMSA_GPA, PAGE_SIZE, vmsa, vcpu=i) for i in range(vcpus)]
    return plan


def calc_launch_digest(
    image: FirmwareImage | bytes,
    *,
    vcpus: int,
    vcpu_sig: int,
    guest_features: int = 0x1,
    hashes: SevHashes | None = None,
    ovmf_hash: bytes | None = None,
    vmm_type: VmmType = VmmType.QEMU,
) -> bytes:
    """The launch digest sev-snp-measure prints for ``--mode snp`` (``--vmm-type``, default QEMU).

    :param image: the firmware (parsed, or raw bytes parsed here).
    :param ovmf_hash: a precomputed digest of the firmware pages (``--snp-ovmf-hash``).
    :returns: the 48-byte MEASUREMENT.
    :raises FirmwareImageError: see :func:`launch_plan`.

    .. versionadded:: 0.1
    """
    if not isinstance(image, FirmwareImage):
        image = FirmwareImage.parse(image)
    ld = LaunchDigest(ovmf_hash) if ovmf_hash is not None else LaunchDigest()
    plan = launch_plan(image, vcpus=vcpus, vcpu_sig=vcpu_sig, guest_features=guest_features, hashes=hashes,
                       include_firmware=ovmf_hash is None, vmm_type=vmm_type)  # fmt: skip
    return ld.apply(plan)
