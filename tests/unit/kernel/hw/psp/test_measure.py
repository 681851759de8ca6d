"""Launch digest vs sev-snp-measure (run in-process here; CLI parity is in tests/interop).

No stored digests: every expected value comes from the installed sev-snp-measure.
"""

from __future__ import annotations

import hashlib
import pathlib
import struct

import pytest

from svsm.kernel.hw.psp import (
    CPU_SIGS,
    PAGE_INFO,
    VMSA_GPA,
    FirmwareImage,
    FirmwareImageError,
    LaunchDigest,
    PageType,
    SevHashes,
    build_image,
    build_reset_vmsa,
    calc_launch_digest,
    cpu_sig,
)
from svsm.sdk.testing import require_module, strict

OVMF = pathlib.Path("/usr/share/ovmf/OVMF.fd")


def _missing(reason: str) -> None:
    """Skip, or fail under SVSM_STRICT=1 (CI installs everything these tests need)."""
    if strict():
        pytest.fail(f"SVSM_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)
SYNTH_SECTIONS = [(0x800000, 0x3000, 1), (0x803000, 0x1000, 2), (0x804000, 0x1000, 3), (0x805000, 0x2000, 4),
                  (0x807000, 0x1000, 0x10)]  # fmt: skip


@pytest.fixture(scope="module")
def ssm():  # type: ignore[no-untyped-def]
    require_module("sevsnpmeasure", "pip install sev-snp-measure==0.0.13")
    from sevsnpmeasure import guest, sev_mode, vmm_types

    def measure(path: pathlib.Path, vcpus: int, sig: int, features: int, kernel: str | None = None,
                initrd: str | None = None, append: str | None = None, ovmf_hash: str = "") -> bytes:  # fmt: skip
        return guest.calc_launch_digest(sev_mode.SevMode.SEV_SNP, vcpus, sig, str(path), kernel, initrd, append,
                                        features, ovmf_hash, vmm_types.VMMType.QEMU)  # fmt: skip

    return measure


def test_page_info_layout() -> None:
    assert PAGE_INFO.size == 0x70
    info = PAGE_INFO.pack(b"\x01" * 48, b"\x02" * 48, 0x70, PageType.VMSA, 0, 0, 0, 0, 0, VMSA_GPA)
    assert info[0x60:0x62] == b"\x70\x00" and info[0x62] == 2 and info[0x63:0x68] == bytes(5)
    assert info[0x68:] == struct.pack("<Q", 0xFFFFFFFFF000)


def test_chaining_formula() -> None:
    page = bytes(range(256)) * 16
    ld = LaunchDigest()
    ld.update_page(PageType.NORMAL, 0x1000, page)
    ld.update_page(PageType.ZERO, 0x2000)
    step1 = hashlib.sha384(bytes(48) + hashlib.sha384(page).digest() + struct.pack("<HBB4sQ", 0x70, 1, 0, bytes(4), 0x1000)).digest()
    step2 = hashlib.sha384(step1 + bytes(48) + struct.pack("<HBB4sQ", 0x70, 3, 0, bytes(4), 0x2000)).digest()
    assert ld.digest == step2 and ld.pages == 2
    fast = LaunchDigest()
    fast.update_normal(0x1000, page)
    assert fast.digest == step1


@pytest.mark.parametrize(
    "bad",
    [
        lambda ld: ld.update_page(PageType.NORMAL, 0x1000, b"x"),
        lambda ld: ld.update_page(PageType.ZERO, 0x1000, bytes(4096)),
        lambda ld: ld.update_page(PageType.ZERO, 0x1001),
        lambda ld: ld.update_normal(0, bytes(100)),
        lambda ld: ld.update_empty(PageType.VMSA, 0, 4096),
    ],
)
def test_digest_input_checks(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        bad(LaunchDigest())


def test_cpu_sig_matches_table() -> None:
    assert cpu_sig(25, 1, 1) == 0xA00F11 == CPU_SIGS["EPYC-Milan-v2"]
    with pytest.raises(ValueError):
        cpu_sig(25, 1, 16)


@pytest.mark.parametrize(
    ("vcpus", "vtype", "features"),
    [(1, "EPYC", 0x1), (2, "EPYC-Milan", 0x21), (4, "EPYC-Genoa", 0x1), (3, "EPYC-Turin", 0x21), (8, "EPYC-Rome", 0x5)],
)
def test_debian_ovmf_matches_sev_snp_measure(ssm, vcpus: int, vtype: str, features: int) -> None:  # type: ignore[no-untyped-def]
    if not OVMF.exists():
        _missing("Debian ovmf package not installed: apt-get install ovmf")
    sig = CPU_SIGS[vtype]
    assert calc_launch_digest(OVMF.read_bytes(), vcpus=vcpus, vcpu_sig=sig, guest_features=features) == ssm(
        OVMF, vcpus, sig, features)


@pytest.mark.parametrize(("vcpus", "sig", "features"), [(1, 0x800F12, 0x1), (2, 0xA00F11, 0x21), (6, 0xB00F00, 0x3)])
def test_synthetic_image_matches(ssm, tmp_path: pathlib.Path, vcpus: int, sig: int, features: int) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fw.fd"
    path.write_bytes(build_image(0x6000, reset_eip=0xFFFFE104, sections=SYNTH_SECTIONS, hashes_gpa=0x807A10))
    assert calc_launch_digest(path.read_bytes(), vcpus=vcpus, vcpu_sig=sig, guest_features=features) == ssm(
        path, vcpus, sig, features)


@pytest.mark.parametrize(("initrd", "append"), [(None, None), (b"initrd-bytes" * 100, None), (b"x", "console=ttyS0 quiet")])
def test_kernel_hashes_match(ssm, tmp_path: pathlib.Path, initrd: bytes | None, append: str | None) -> None:  # type: ignore[no-untyped-def]
    fw, kernel, rd = tmp_path / "fw.fd", tmp_path / "vmlinuz", tmp_path / "initrd"
    fw.write_bytes(build_image(0x6000, sections=SYNTH_SECTIONS, hashes_gpa=0x807A10))
    kernel.write_bytes(b"\x7fkernel" * 999)
    if initrd is not None:
        rd.write_bytes(initrd)
    hashes = SevHashes.of(kernel.read_bytes(), initrd, append)
    ours = calc_launch_digest(fw.read_bytes(), vcpus=2, vcpu_sig=0xA00F11, hashes=hashes)
    assert ours == ssm(fw, 2, 0xA00F11, 0x1, str(kernel), str(rd) if initrd is not None else None, append)
    assert ours != calc_launch_digest(fw.read_bytes(), vcpus=2, vcpu_sig=0xA00F11)


def test_hash_table_bytes_match(tmp_path: pathlib.Path) -> None:
    require_module("sevsnpmeasure")
    from sevsnpmeasure.sev_hashes import SevHashes as TheirHashes

    kernel = tmp_path / "k"
    kernel.write_bytes(b"kernel")
    theirs = TheirHashes(str(kernel), "", "root=/dev/vda")
    ours = SevHashes.of(b"kernel", None, "root=/dev/vda")
    assert ours.table() == theirs.construct_table() and len(ours.table()) == 176
    assert ours.page(0xA10) == theirs.construct_page(0xA10)
    with pytest.raises(ValueError):
        ours.page(4000)


@pytest.mark.parametrize(("eip", "features"), [(0xFFFFFFF0, 0x1), (0x80B004, 0x21)])
def test_vmsa_bytes_match(eip: int, features: int) -> None:
    require_module("sevsnpmeasure")
    from sevsnpmeasure.vmsa import VMSA as TheirVMSA

    theirs = bytes(TheirVMSA.build_save_area(eip, features, 0xA10F10))
    assert build_reset_vmsa(eip, 0xA10F10, features) == theirs


def test_ovmf_hash_seed(ssm, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fw.fd"
    path.write_bytes(build_image(0x6000, sections=SYNTH_SECTIONS))
    img = FirmwareImage.parse(path.read_bytes())
    seed = LaunchDigest()
    seed.update_normal(img.gpa, img.data)
    ours = calc_launch_digest(img, vcpus=2, vcpu_sig=0x800F12, ovmf_hash=seed.digest)
    assert ours == ssm(path, 2, 0x800F12, 0x1, ovmf_hash=seed.digest.hex())
    assert ours == calc_launch_digest(img, vcpus=2, vcpu_sig=0x800F12)


def test_kernel_without_hash_section_is_refused() -> None:
    img = build_image(0x4000, sections=[(0x800000, 0x1000, 2)])
    with pytest.raises(FirmwareImageError):
        calc_launch_digest(img, vcpus=1, vcpu_sig=1, hashes=SevHashes.of(b"k"))


def test_missing_reset_block_is_refused() -> None:
    with pytest.raises(FirmwareImageError):
        calc_launch_digest(build_image(0x4000, reset_eip=None), vcpus=1, vcpu_sig=1)


def test_parallel_page_hashing_equals_serial() -> None:
    data = bytes(range(256)) * 16 * 300 + b"\x5a" * 4096 * 9  # 309 pages: not a multiple of the chunk
    assert len(data) >= 1 << 20
    serial, parallel = LaunchDigest(workers=1), LaunchDigest(workers=3)
    serial.update_normal(0x10000, data)
    parallel.update_normal(0x10000, data)
    assert serial.digest == parallel.digest and serial.pages == parallel.pages == 309


@pytest.mark.parametrize("vmm", ["ec2", "gce"])
@pytest.mark.parametrize("vcpus", [1, 3])
def test_other_vmm_types_match(tmp_path: pathlib.Path, vmm: str, vcpus: int) -> None:
    require_module("sevsnpmeasure")
    from sevsnpmeasure import guest, sev_mode, vmm_types
    from sevsnpmeasure.vmsa import VMSA as TheirVMSA

    from svsm.kernel.hw.psp import VmmType

    path = tmp_path / "fw.fd"
    path.write_bytes(build_image(0x6000, reset_eip=0xFFFFE104, sections=SYNTH_SECTIONS))
    theirs = guest.calc_launch_digest(sev_mode.SevMode.SEV_SNP, vcpus, 0, str(path), None, None, None, 0x1, "",
                                      vmm_types.VMMType[vmm])  # fmt: skip
    assert calc_launch_digest(path.read_bytes(), vcpus=vcpus, vcpu_sig=0, vmm_type=VmmType(vmm)) == theirs
    for eip in (0xFFFFFFF0, 0xFFFFE104):
        assert build_reset_vmsa(eip, 0, 0x21, VmmType(vmm)) == bytes(TheirVMSA.build_save_area(eip, 0x21, 0, vmm_types.VMMType[vmm]))


def test_svsm_vmsa_matches() -> None:
    require_module("sevsnpmeasure")
    from sevsnpmeasure.vmsa import VMSA_SVSM

    from svsm.kernel.hw.psp import build_svsm_vmsa

    assert build_svsm_vmsa(0xFFC01230, 0xA00F11) == next(VMSA_SVSM(0xFFC01230, 0xA00F11).pages(1))


def test_svsm_image_needs_svsm_info() -> None:
    from svsm.kernel.hw.psp import svsm_launch_plan

    ovmf = FirmwareImage.parse(build_image(0x4000))
    with pytest.raises(FirmwareImageError):
        svsm_launch_plan(ovmf, FirmwareImage.parse(build_image(0x4000), end_at=ovmf.gpa), vcpus=1, vcpu_sig=1)
