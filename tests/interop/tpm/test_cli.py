"""``svsm tpm serve`` as a real process, driven by tpm2-tools."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from svsm.sdk.testing import require_tool
from svsm.sdk.tpm import free_port_pair

pytestmark = pytest.mark.slow


class Served:
    """One ``svsm tpm serve`` process."""

    def __init__(self, *args: str, unix: str | None = None) -> None:
        self.port = free_port_pair()
        self.unix = unix
        where = ["--unix", unix] if unix else ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "svsm.kernel.cli.tpm", "serve", *where, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if "svsm tpm serve:" not in line:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r} {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        self.banner = line

    def tool(self, transport: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        exe = require_tool(args[0], "apt-get install tpm2-tools")
        conf = f"path={self.unix}" if self.unix else f"host=127.0.0.1,port={self.port}"
        env = {**os.environ, "TPM2TOOLS_TCTI": f"{transport}:{conf}"}
        proc = subprocess.run([exe, *args[1:]], env=env, capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
        return proc

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def served() -> Iterator[list[Served]]:
    procs: list[Served] = []
    yield procs
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def test_direct_state_survives_process_restart(served: list[Served], tmp_path: pathlib.Path) -> None:
    require_tool("tpm2_startup")
    state = tmp_path / "state"
    s = Served("--direct", "--state", str(state))
    served.append(s)
    assert f"port={s.port}" in s.banner
    s.tool("mssim", "tpm2_startup", "-c")
    s.tool("mssim", "tpm2_nvdefine", "0x1500018", "-C", "o", "-s", "4", "-a", "ownerread|ownerwrite")
    (tmp_path / "d").write_bytes(b"keep")
    s.tool("mssim", "tpm2_nvwrite", "0x1500018", "-C", "o", "-i", str(tmp_path / "d"))
    s.tool("mssim", "tpm2_shutdown")
    assert s.stop() == 0
    # A new process on the same state dir, now over the swtpm protocol.
    s2 = Served("--direct", "--state", str(state), "--transport", "swtpm")
    served.append(s2)
    s2.tool("swtpm", "tpm2_startup", "-c")
    assert s2.tool("swtpm", "tpm2_nvread", "0x1500018", "-C", "o", "-s", "4").stdout == "keep"
    assert s2.stop() == 0


def test_full_path_default_process_mode(served: list[Served]) -> None:
    """TCP -> guest driver -> SVSM_VTPM_CMD -> kernel -> sandboxed vTPM module process."""
    require_tool("tpm2_startup")
    s = Served()
    served.append(s)
    assert "SVSM_VTPM_CMD" in s.banner
    s.tool("mssim", "tpm2_startup", "-c")
    out = s.tool("mssim", "tpm2_getrandom", "--hex", "8").stdout
    assert len(out.strip()) == 16
    assert s.stop() == 0


def test_full_path_state_survives_cvm_restart(served: list[Served], tmp_path: pathlib.Path) -> None:
    """NV written through the guest survives a reboot: vTPM module -> persist module -> DIR/persist.img."""
    require_tool("tpm2_startup")
    state = tmp_path / "state"
    s = Served("--state", str(state))
    served.append(s)
    s.tool("mssim", "tpm2_startup", "-c")
    s.tool("mssim", "tpm2_nvdefine", "0x1500019", "-C", "o", "-s", "5", "-a", "ownerread|ownerwrite")
    (tmp_path / "d").write_bytes(b"guest")
    s.tool("mssim", "tpm2_nvwrite", "0x1500019", "-C", "o", "-i", str(tmp_path / "d"))
    s.tool("mssim", "tpm2_shutdown")
    assert s.stop() == 0
    assert (state / "persist.img").exists()
    s2 = Served("--state", str(state))
    served.append(s2)
    s2.tool("mssim", "tpm2_startup", "-c")
    assert s2.tool("mssim", "tpm2_nvread", "0x1500019", "-C", "o", "-s", "5").stdout == "guest"
    assert s2.stop() == 0


@pytest.mark.parametrize("transport", ["mssim", "swtpm"])
def test_unix_socket_path_tcti(served: list[Served], tmp_path: pathlib.Path, transport: str) -> None:
    require_tool("tpm2_startup")
    sock = str(tmp_path / "tpm.sock")
    s = Served("--direct", "--transport", transport, unix=sock)
    served.append(s)
    assert f"{transport}:path={sock}" in s.banner
    s.tool(transport, "tpm2_startup", "-c")
    assert len(s.tool(transport, "tpm2_getrandom", "--hex", "8").stdout.strip()) == 16
    assert s.stop() == 0
    assert not os.path.exists(sock) and not os.path.exists(sock + ".ctrl")


def test_busy_port_is_a_usage_error() -> None:
    import socket

    port = free_port_pair()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        proc = subprocess.run(
            [sys.executable, "-m", "svsm.kernel.cli.tpm", "serve", "--direct", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 2 and "cannot listen" in proc.stderr
