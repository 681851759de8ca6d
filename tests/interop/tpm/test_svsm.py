"""Full-path-only checks: the vTPM behind a booted CVM, seen by the guest and by tpm2-tools."""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from svsm.sdk.testing import require_tool
from svsm.sdk.tpm import MssimServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_path() -> Iterator[tuple[Any, MssimServer]]:
    from svsm.kernel.cli.tpm import open_device

    driver, owner = open_device(direct=False, state=None, module_mode="inprocess")
    server = MssimServer(driver).start()
    try:
        yield owner, server
    finally:
        server.stop()
        owner.close()


def _tool(server: MssimServer, cwd: pathlib.Path, *args: str) -> str:
    exe = require_tool(args[0], "apt-get install tpm2-tools")
    env = {**os.environ, "TPM2TOOLS_TCTI": f"mssim:host=127.0.0.1,port={server.port}"}
    proc = subprocess.run([exe, *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_probe_reports_send_command_only(full_path: tuple[Any, MssimServer]) -> None:
    owner, _ = full_path
    assert (owner.driver.platform_commands, owner.driver.features) == (0x100, 0)


def test_ek_from_tpm2_createek_is_the_one_in_the_attested_manifest(full_path: tuple[Any, MssimServer], tmp_path: pathlib.Path) -> None:
    """tpm2_createek re-derives the RSA EK from the endorsement seed; the SVSM's services manifest
    (ATTEST_SINGLE_SERVICE for the vTPM GUID) must carry the same TPMT_PUBLIC."""
    from svsm.sdk.guest import VTPM_SERVICE_GUID

    owner, server = full_path
    _tool(server, tmp_path, "tpm2_startup", "-c")
    _tool(server, tmp_path, "tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    _tool(server, tmp_path, "tpm2_flushcontext", "-t")
    ek_public = (tmp_path / "ek.pub").read_bytes()[2:]  # TPM2B_PUBLIC -> TPMT_PUBLIC
    guest = owner.cvm.guest
    guest.accept_memory(0x200000, 0x200000)  # buffers for the report, manifest and certificates
    att = guest.attest(os.urandom(64), VTPM_SERVICE_GUID)
    assert dict(att.manifest.services)[VTPM_SERVICE_GUID] == ek_public
    att.verify()  # REPORT_DATA = SHA-512(nonce || manifest), report signed by the chip's VCEK
