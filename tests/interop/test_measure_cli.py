"""``svsm measure`` vs the ``sev-snp-measure`` CLI with the same arguments (no stored digests).

Includes measured direct boot of a real Debian kernel (cached by .ci/install-system-deps in
/var/cache/pysvsm/vmlinuz) into a synthetic image that has a kernel-hashes section.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import subprocess
import sys

import pytest

from svsm.kernel.cli import main
from svsm.kernel.hw.psp import SectionType, build_image
from svsm.sdk.testing import require_module, strict

OVMF = pathlib.Path("/usr/share/ovmf/OVMF.fd")

KERNEL = pathlib.Path(os.environ.get("SVSM_KERNEL_CACHE", "/var/cache/pysvsm")) / "vmlinuz"
SECTIONS = [(0x800000, 0x9000, SectionType.SNP_SEC_MEM), (0x809000, 0x1000, SectionType.SNP_SECRETS),
            (0x80A000, 0x1000, SectionType.CPUID), (0x80B000, 0x1000, SectionType.SNP_KERNEL_HASHES),
            (0x80C000, 0x4000, SectionType.SNP_SEC_MEM)]  # fmt: skip

pytestmark = pytest.mark.slow


def _missing(reason: str) -> None:
    """Skip, or fail under SVSM_STRICT=1 (CI installs everything these tests need)."""
    if strict():
        pytest.fail(f"SVSM_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def _theirs(args: list[str]) -> str:
    """Run the sev-snp-measure CLI (its console script may not be on PATH outside the venv)."""
    require_module("sevsnpmeasure", "pip install sev-snp-measure==0.0.13")
    cmd = [sys.executable, "-m", "sevsnpmeasure.cli", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _ours(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["measure", *args])
    assert rc == 0
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("fw") / "synthetic.fd"
    path.write_bytes(build_image(0x40000, reset_eip=0xFFFC1004, sections=SECTIONS, hashes_gpa=0x80BC00))
    return path


@pytest.mark.parametrize(
    "extra",
    [
        ["--vcpus", "1", "--vcpu-type", "EPYC"],
        ["--vcpus", "4", "--vcpu-type", "EPYC-Milan", "--guest-features", "0x21"],
        ["--vcpus", "2", "--vcpu-sig", "0xA10F10", "--output-format", "base64"],
        ["--vcpus", "3", "--vcpu-family", "26", "--vcpu-model", "0", "--vcpu-stepping", "0"],
        ["--vcpus", "2", "--vmm-type", "ec2"],
        ["--vcpus", "2", "--vmm-type", "gce", "--guest-features", "0x21"],
    ],
)
def test_debian_ovmf_cli_parity(extra: list[str]) -> None:
    if not OVMF.exists():
        _missing("Debian ovmf package not installed: apt-get install ovmf")
    args = ["--mode", "snp", "--ovmf", str(OVMF), *extra]
    ours = _ours(args)
    assert ours == _theirs(args)


def test_ovmf_hash_mode_parity() -> None:
    if not OVMF.exists():
        _missing("Debian ovmf package not installed: apt-get install ovmf")
    args = ["--mode", "snp:ovmf-hash", "--ovmf", str(OVMF)]
    digest = _ours(args)
    assert digest == _theirs(args) and len(digest) == 96
    args = ["--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Genoa", "--ovmf", str(OVMF), "--snp-ovmf-hash", digest]
    assert _ours(args) == _theirs(args)


@pytest.mark.parametrize("append", [None, "console=ttyS0 root=/dev/vda1 ro"])
def test_real_kernel_direct_boot_parity(synthetic: pathlib.Path, tmp_path: pathlib.Path, append: str | None) -> None:
    if not KERNEL.exists():
        _missing(f"{KERNEL} missing: run .ci/install-system-deps")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(os.urandom(3000))
    args = ["--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Milan", "--ovmf", str(synthetic),
            "--kernel", str(KERNEL), "--initrd", str(initrd)]  # fmt: skip
    if append is not None:
        args += ["--append", append]
    ours = _ours(args)
    assert ours == _theirs(args)
    # the kernel matters
    assert ours != _ours(["--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Milan", "--ovmf", str(synthetic)])


def test_dump_vmsa_parity(synthetic: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["--mode", "snp", "--vcpus", "2", "--vcpu-type", "EPYC-Rome", "--ovmf", str(synthetic), "--dump-vmsa"]
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    monkeypatch.chdir(tmp_path / "ours")
    _ours(args)
    monkeypatch.chdir(tmp_path / "theirs")
    _theirs(args)
    for name in ("vmsa0.bin", "vmsa1.bin"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes()


def test_kernel_refused_without_hash_section(tmp_path: pathlib.Path) -> None:
    if not OVMF.exists():
        _missing("Debian ovmf package not installed: apt-get install ovmf")
    k = tmp_path / "k"
    k.write_bytes(b"k")
    assert main(["measure", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", str(OVMF), "--kernel", str(k)]) == 2


@pytest.mark.parametrize("vars_args", [["--vars-size", "131072"], ["--vars-file", "FW"]])
def test_svsm_mode_parity(synthetic: pathlib.Path, tmp_path: pathlib.Path, vars_args: list[str]) -> None:
    svsm = tmp_path / "svsm.bin"
    svsm.write_bytes(build_image(0x8000, reset_eip=None, svsm_entry=0x1230, fill=b"SV", sections=[
        (0x7F000, 0x1000, SectionType.SNP_SECRETS), (0x7E000, 0x1000, SectionType.CPUID),
        (0x70000, 0x4000, SectionType.SNP_SEC_MEM)]))  # fmt: skip
    vars_args = [str(synthetic) if a == "FW" else a for a in vars_args]
    args = ["--mode", "snp:svsm", "--vcpus", "3", "--vcpu-type", "EPYC-Genoa", "--ovmf", str(synthetic),
            "--svsm", str(svsm), *vars_args]  # fmt: skip
    assert _ours(args) == _theirs(args)
