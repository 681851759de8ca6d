"""``svsm measure`` argument handling (digest parity with sev-snp-measure: tests/interop)."""

from __future__ import annotations

import base64
import contextlib
import io
import pathlib

import pytest

from svsm.kernel.cli import main
from svsm.kernel.hw.psp import CPU_SIGS, SevHashes, build_image, calc_launch_digest


@pytest.fixture
def fw(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "fw.fd"
    path.write_bytes(build_image(0x4000, sections=[(0x800000, 0x1000, 2), (0x801000, 0x1000, 0x10)], hashes_gpa=0x801100))
    return path


def _run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["measure", *args])
    return rc, out.getvalue().strip()


def test_prints_the_digest(fw: pathlib.Path, tmp_path: pathlib.Path) -> None:
    rc, out = _run("--ovmf", str(fw), "--vcpus", "2", "--vcpu-type", "EPYC-Milan", "--guest-features", "0x21")
    assert rc == 0 and out == calc_launch_digest(fw.read_bytes(), vcpus=2, vcpu_sig=CPU_SIGS["EPYC-Milan"], guest_features=0x21).hex()
    rc, b64 = _run("--ovmf", str(fw), "--vcpus", "2", "--vcpu-sig", "0xA00F11", "--guest-features", "0x21", "--output-format", "base64")
    assert rc == 0 and base64.b64decode(b64).hex() == out
    kernel = tmp_path / "k"
    kernel.write_bytes(b"kernel")
    rc, out = _run("--ovmf", str(fw), "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", str(kernel), "--append", "x")
    hashes = SevHashes.of(b"kernel", None, "x")
    assert rc == 0 and out == calc_launch_digest(fw.read_bytes(), vcpus=1, vcpu_sig=0x800F12, hashes=hashes).hex()


@pytest.mark.parametrize(
    "args",
    [
        ["--vcpus", "1"],  # no vCPU type
        ["--vcpu-type", "EPYC"],  # no --vcpus
        ["--vcpus", "1", "--vcpu-type", "EPYC", "--initrd", "/etc/hostname"],  # initrd without kernel
        ["--vcpus", "1", "--vcpu-family", "25"],  # family without model/stepping
    ],
)
def test_usage_errors(fw: pathlib.Path, args: list[str]) -> None:
    assert _run("--ovmf", str(fw), *args)[0] == 2


def test_unreadable_or_bad_firmware(tmp_path: pathlib.Path) -> None:
    assert _run("--ovmf", str(tmp_path / "missing.fd"), "--vcpus", "1", "--vcpu-type", "EPYC")[0] == 2
    bad = tmp_path / "bad.fd"
    bad.write_bytes(b"x" * 100)
    assert _run("--ovmf", str(bad), "--vcpus", "1", "--vcpu-type", "EPYC")[0] == 2
