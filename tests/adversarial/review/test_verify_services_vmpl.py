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
