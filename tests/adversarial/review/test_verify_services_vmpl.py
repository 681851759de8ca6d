"""SECREVIEW: `svsm verify` must not accept a services manifest bound by a report below VMPL0.

At VMPL1-3 the guest OS asks the PSP for reports with its own VMPCK and picks REPORT_DATA
itself, so it can bind SHA-512(nonce || any manifest it likes).  Only a VMPL0 report (asked
for by the SVSM) vouches for the services manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pathlib

import pytest

from svsm.kernel.cli import main

pytestmark = pytest.mark.slow


def test_verify_refuses_a_services_manifest_in_a_guest_vmpl_report(tmp_path: pathlib.Path) -> None:
    state, out = tmp_path / "chips", tmp_path / "evidence"
    nonce = b"N" * 64
    forged = b"forged services manifest: the vTPM EK is the guest OS's own key"
    report_data = hashlib.sha512(nonce + forged).hexdigest()
    pin = ["--state-dir", str(state), "--chip", "review"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        # the guest OS at VMPL2 asks the PSP directly (its VMPCK2) with REPORT_DATA of its choice
        assert main(["attest", "--direct", "--vmpl", "2", "--out", str(out), "--nonce", report_data, *pin]) == 0
    (out / "nonce.bin").write_bytes(nonce)
    (out / "manifest.bin").write_bytes(forged)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["verify", str(out), *pin]) == 1
    assert "VMPL0" in err.getvalue()
    # the same report without a manifest is a plain VMPL2 report: still verifies
    (out / "manifest.bin").unlink()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["verify", str(out), "--nonce", report_data, *pin]) == 0


def test_verify_refuses_a_debug_policy_unless_allowed(tmp_path: pathlib.Path) -> None:
    """MEASUREMENT does not cover the guest policy: the same image launched with DEBUG is the host's."""
    from svsm.kernel.hw.psp import Chip, SnpFirmware

    state, out = tmp_path / "chips", tmp_path / "evidence"
    chip = Chip.load_or_create(state / "review")
    fw = SnpFirmware(chip)
    ctx = fw.launch_start(0x30000 | 1 << 19)
    fw.launch_update_normal(ctx, 0x1000, bytes(4096))
    fw.launch_finish(ctx)
    out.mkdir()
    (out / "report.bin").write_bytes(fw.build_report(ctx, bytes(64), 0))
    for name, pem in zip(("ark.pem", "ask.pem", "vcek.pem"), chip.chain_pem()):
        (out / name).write_bytes(pem)
    pin = ["--state-dir", str(state), "--chip", "review"]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["verify", str(out), *pin]) == 1
        assert main(["verify", str(out), "--allow-debug", *pin]) == 0
    assert "debugging" in err.getvalue()
