"""svsm.kernel.hw.psp -- the simulated AMD-SP (PSP) firmware.

What it does: SNP launch with the real launch-digest chaining (so sev-snp-measure agrees),
OVMF image parsing as QEMU does it, the secrets page, guest messages under VMPCKs,
attestation reports signed by a per-chip VCEK under a generated ARK -> ASK -> VCEK chain,
and derived keys.

Entry points for the rest of kernel/hw (also docs/dev/hw-api.md, section "PSP"):

* one machine: ``psp = PlatformPsp(SnpFirmware(chip), platform); platform.psp = psp;
  psp.launch(launch_plan(image, vcpus=..., vcpu_sig=...))`` places every page through
  ``platform.firmware`` and serves the hypervisor's ``psp.guest_request(page) -> page`` and
  ``psp.certificates()`` (HW's GuestRequestFirmware seam).
* launch: ``fw = SnpFirmware(Chip.load_or_create(state_dir))``;
  ``result = launch(fw, launch_plan(FirmwareImage.parse(data), vcpus=..., vcpu_sig=...),
  write=writer)``.  ``writer(page_type, gpa, data, vcpu)`` places each page in guest memory
  with the firmware-privileged API (RMP: assigned to the guest, validated, VMSA bit for VMSA
  pages).  Step by step: ``fw.launch_start()``, ``fw.launch_update(ctx, type, gpa, data)``
  (returns the page bytes to write; the SECRETS page gets VMPCKs), ``fw.launch_finish(ctx)``.
* guest request (the hypervisor's GUEST_REQUEST / EXT_GUEST_REQUEST handlers):
  ``response_page = fw.guest_request(ctx, request_page_bytes)``; errors raise
  :class:`PspError` (``fw_error`` -> SW_EXITINFO2[31:0]); for the extended request
  ``fw.ext_guest_request(ctx, page, cert_pages)`` returns ``(response, cert_table)`` or
  raises :class:`VmmError` (``vmm_error`` -> SW_EXITINFO2[63:32], ``pages_needed`` -> RBX).

Also: ID blocks at LAUNCH_FINISH (:func:`build_id_block`), REPORTED_TCB / MASK_CHIP_ID /
MASK_CHIP_KEY (``SnpFirmware`` arguments), EC2/GCE launch orders (:class:`VmmType`) and
sev-snp-measure's SVSM mode (:func:`svsm_launch_plan`).

Assumptions where spec/snp.md 7 has no confirmed text: malformed, unauthenticated, replayed or
out-of-order guest messages get firmware error INVALID_PARAM (0x16) and advance nothing;
every guest has a VMRK (no migration agents); REPORT_ID_MA is all 0xFF; the secrets page
VERSION is 3.

Report parsing and verification live in :mod:`svsm.sdk.attestation`.
"""

from ._chip import PRODUCTS as PRODUCTS
from ._chip import Chip as Chip
from ._chip import ChipProduct as ChipProduct
from ._chip import default_state_dir as default_state_dir
from ._firmware import FwError as FwError
from ._firmware import GuestContext as GuestContext
from ._firmware import LaunchState as LaunchState
from ._firmware import PspError as PspError
from ._firmware import PspStatistics as PspStatistics
from ._firmware import SnpFirmware as SnpFirmware
from ._firmware import VmmError as VmmError
from ._hashes import SevHashes as SevHashes
from ._idblock import ID_AUTH as ID_AUTH
from ._idblock import ID_BLOCK as ID_BLOCK
from ._idblock import build_id_block as build_id_block
from ._idblock import key_digest as key_digest
from ._launch import LaunchResult as LaunchResult
from ._launch import PageWriter as PageWriter
from ._launch import launch as launch
from ._measure import PAGE_INFO as PAGE_INFO
from ._measure import VMSA_GPA as VMSA_GPA
from ._measure import LaunchDigest as LaunchDigest
from ._measure import LaunchUpdate as LaunchUpdate
from ._measure import PageType as PageType
from ._measure import calc_launch_digest as calc_launch_digest
from ._measure import launch_plan as launch_plan
from ._measure import svsm_launch_plan as svsm_launch_plan
from ._ovmf import FirmwareImage as FirmwareImage
from ._platform import PlatformPsp as PlatformPsp
from ._ovmf import FirmwareImageError as FirmwareImageError
from ._ovmf import SectionType as SectionType
from ._ovmf import SevMetadataSection as SevMetadataSection
from ._ovmf import build_image as build_image
from ._ovmf import build_metadata as build_metadata
from ._ovmf import build_table as build_table
from ._vmsa import CPU_SIGS as CPU_SIGS
from ._vmsa import VmmType as VmmType
from ._vmsa import build_reset_vmsa as build_reset_vmsa
from ._vmsa import build_svsm_vmsa as build_svsm_vmsa
from ._vmsa import cpu_sig as cpu_sig

__all__ = [
    "CPU_SIGS", "Chip", "ID_AUTH", "ID_BLOCK", "ChipProduct", "FirmwareImage", "FirmwareImageError", "FwError",
    "GuestContext", "LaunchDigest", "LaunchResult", "LaunchState", "LaunchUpdate", "PageWriter", "PAGE_INFO", "PRODUCTS",
    "PageType", "PlatformPsp", "PspError", "PspStatistics", "SectionType", "SevHashes", "SevMetadataSection",
    "SnpFirmware", "VMSA_GPA", "VmmError", "VmmType", "build_id_block", "build_image", "build_metadata", "build_reset_vmsa", "build_svsm_vmsa", "build_table",
    "calc_launch_digest", "cpu_sig", "default_state_dir", "key_digest", "launch", "launch_plan", "svsm_launch_plan",
]  # fmt: skip
