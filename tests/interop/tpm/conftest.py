"""Fixtures for driving a served TPM with tpm2-tools and tpm2-pytss.

A *target* is one TPM backend behind one of our transports:

* ``swtpm-proxy``: a real ``swtpm`` process behind our server (transport check: a failure here
  is a bug in sdk/tpm or in the test, never in our engine);
* ``direct``: the vTPM engine (``svsm.modules.tpm``, loaded through its entry point) served
  in-process, as ``svsm tpm serve --direct`` does;
* ``svsm``: the full path, TCP -> guest vTPM driver -> SVSM_VTPM_CMD -> kernel -> module.

Each is served over ``mssim`` and ``swtpm``; one server per test module (module scope).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from collections.abc import Iterator

import pytest

from svsm.kernel.cli.tpm import BackendUnavailable
from svsm.sdk.testing import require_tool, strict
from svsm.sdk.tpm import MssimServer, SwtpmClient, SwtpmServer, TpmServer, free_port_pair

TRANSPORTS = ("mssim", "swtpm")
BACKENDS = ("swtpm-proxy", "direct", "svsm")


class SwtpmProcess:
    """A real ``swtpm socket`` on free ports with a state dir (started without TPM2_Startup)."""

    def __init__(self, state: pathlib.Path) -> None:
        self.state = state
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        swtpm = require_tool("swtpm", "apt-get install swtpm")
        self.port = free_port_pair()
        self.proc = subprocess.Popen(
            [swtpm, "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                SwtpmClient(port=self.port).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"swtpm did not start: {self.proc.stderr.read()!r}") from None  # type: ignore[union-attr]
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            SwtpmClient(port=self.port).shutdown()
        except OSError:
            pass  # already gone; kill below
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Target:
    """One served TPM: its TCTI string and a way to restart it keeping persistent state."""

    def __init__(self, backend: str, transport: str, workdir: pathlib.Path) -> None:
        self.backend, self.transport, self.workdir = backend, transport, workdir
        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.server: TpmServer | None = None
        self.swtpm: SwtpmProcess | None = None
        self.boot: object | None = None

    @property
    def tcti(self) -> str:
        assert self.server is not None
        return f"{self.transport}:host=127.0.0.1,port={self.server.port}"

    def _device(self) -> object:
        if self.backend == "swtpm-proxy":
            self.swtpm = SwtpmProcess(self.state)
            self.swtpm.start()
            return SwtpmClient(port=self.swtpm.port)
        from svsm.kernel.cli.tpm import open_device  # the same code path as `svsm tpm serve`

        # The full path runs the module in-process (threads) here to keep the suite fast;
        # test_cli.py covers the sandboxed-process mode once.
        device, self.boot = open_device(direct=self.backend == "direct", state=self.state, module_mode="inprocess")
        return device

    def start(self) -> None:
        cls = MssimServer if self.transport == "mssim" else SwtpmServer
        self.server = cls(self._device()).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.swtpm is not None:
            self.swtpm.stop()
            self.swtpm = None
        close = getattr(self.boot, "close", None)
        if close is not None:
            close()
        self.boot = None

    def restart(self) -> None:
        """Stop everything and start again on the same state dir (a power cycle of the platform)."""
        self.stop()
        self.start()


def _target_params() -> list[object]:
    want = os.environ.get("SVSM_TPM_BACKENDS")
    backends = want.split(",") if want else list(BACKENDS)
    return [pytest.param((b, t), id=f"{b}-{t}") for b in backends for t in TRANSPORTS]


@pytest.fixture(scope="module", params=_target_params())
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    backend, transport = request.param
    t = Target(backend, transport, tmp_path_factory.mktemp(f"tpm-{backend}-{transport}"))
    try:
        t.start()
    except (ImportError, BackendUnavailable) as exc:
        t.stop()
        reason = f"TPM backend {backend!r} not available: {exc}"
        pytest.fail(f"SVSM_STRICT=1 and {reason}") if strict() else pytest.skip(reason)
    try:
        startup = Tools(t)._run("tpm2_startup", "-c", check=False)
        assert startup.returncode == 0 or "0x100" in startup.stderr, startup.stderr
        yield t
    finally:
        t.stop()


#: Tools that leave no transient object loaded (they take handles, not context files).
_LOADS_NOTHING = frozenset({
    "tpm2_flushcontext", "tpm2_startup", "tpm2_shutdown", "tpm2_getrandom", "tpm2_getcap", "tpm2_pcrread",
    "tpm2_pcrextend", "tpm2_pcrreset", "tpm2_hash", "tpm2_nvdefine", "tpm2_nvundefine", "tpm2_nvwrite",
    "tpm2_nvread", "tpm2_nvincrement", "tpm2_changeauth", "tpm2_clear",
})


class Tools:
    """Runs tpm2-tools against a target; a failing call fails the test with the tool's output."""

    def __init__(self, target: Target, cwd: pathlib.Path | None = None) -> None:
        self.target = target
        self.cwd = cwd or target.workdir

    def run(self, tool: str, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one tool, then flush transient objects.

        Without a resource manager every object a tool loads stays loaded, and a TPM has only
        a few object slots (HR_TRANSIENT_MIN = 3), so each call is followed by
        ``tpm2_flushcontext -t`` as tpm2-abrmd would do between clients.
        """
        proc = self._run(tool, *args, check=check, input=input, timeout=timeout)
        if tool not in _LOADS_NOTHING:
            self._run("tpm2_flushcontext", "-t")
        return proc

    def _run(self, tool: str, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        exe = require_tool(tool, "apt-get install tpm2-tools")
        env = {**os.environ, "TPM2TOOLS_TCTI": self.target.tcti}
        proc = subprocess.run(
            [exe, *args], cwd=self.cwd, env=env, input=input.decode("latin-1") if input else None,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{tool} {' '.join(args)} failed (rc={proc.returncode}) on {self.target.backend}/{self.target.transport}:\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}",
                pytrace=False,
            )
        return proc


@pytest.fixture
def tpm2(target: Target, tmp_path: pathlib.Path) -> Tools:
    """tpm2-tools bound to the module's target, working in a fresh directory."""
    return Tools(target, tmp_path)
