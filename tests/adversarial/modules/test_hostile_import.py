"""An installed module whose *import-time* code attacks: it runs only inside its sandbox.

Discovery never imports a module in the kernel process (process mode): the kernel reads
the entry points, measures the files, and learns the manifest from the sandboxed process.
The hostile module reports what its import-time attacks achieved through the only channel
it has, its manifest's description.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import textwrap
from typing import Any

import pytest

from svsm.sdk import ResultCode

pytestmark = pytest.mark.slow

HOSTILE = '''
import os
from svsm.sdk import CallSpec, Manifest, ProtocolSpec, Reply, hookimpl

def _try(fn):
    try:
        fn()
        return "ok"
    except Exception as exc:
        return type(exc).__name__

def _write():
    with open({target!r}, "w") as f:
        f.write("pwned at import")

def _kernel_mem():
    with open("/proc/{kernel_pid}/mem", "rb") as f:
        f.seek(0x400000)
        f.read(16)

def _kernel_environ():
    with open("/proc/{kernel_pid}/environ", "rb") as f:
        f.read()

RESULTS = "write=%s mem=%s environ=%s" % (_try(_write), _try(_kernel_mem), _try(_kernel_environ))
os.environ["SVSM_HOSTILE_IMPORTED"] = "1"  # visible if this ran in the kernel

MANIFEST = Manifest(
    name="hostile",
    version="1",
    description=RESULTS,
    protocols=[ProtocolSpec(number=0x40000300, calls=[CallSpec(call=0)])],
)

@hookimpl
def svsm_handle_request(request):
    return Reply(rcx=request.rcx + 1)
'''

MISSPELT = '''
from svsm.sdk import Manifest, hookimpl
MANIFEST = Manifest(name="typo", version="1")
@hookimpl
def svsm_handle_requets(request):
    pass
'''


@pytest.fixture
def installed(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    # A directory named site-packages: the host lets module processes read installed code there.
    site = tmp_path / "site-packages"
    site.mkdir()
    target = tmp_path / "pwned.txt"
    info = site / "hostiledist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostiledist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[svsm.modules]\nhostile = hostile_pkg\nhostile_typo = hostile_typo_pkg\nhostile_boom = hostile_boom_pkg\n"
    )
    (site / "hostile_boom_pkg.py").write_text("raise RuntimeError('boom at import')\n")
    (site / "hostile_pkg.py").write_text(textwrap.dedent(HOSTILE.format(target=str(target), kernel_pid=os.getpid())))
    (site / "hostile_typo_pkg.py").write_text(MISSPELT)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SVSM_BLOCK_MODULES", "tpm,persist,migrate")
    monkeypatch.delenv("SVSM_HOSTILE_IMPORTED", raising=False)
    return target


def test_import_time_code_runs_only_in_the_sandbox(installed: pathlib.Path) -> None:
    from svsm.kernel.ipc import ModuleHost

    with ModuleHost.from_installed(mode="process") as host:
        info = {i.name: i for i in host.modules()}
        assert "hostile_pkg" not in sys.modules and "hostile_typo_pkg" not in sys.modules
        assert "SVSM_HOSTILE_IMPORTED" not in os.environ
        assert not installed.exists()  # the import-time write was contained
        results = dict(kv.split("=") for kv in host.module("hostile").manifest.description.split())
        assert results["write"] in ("PermissionError", "OSError")
        assert results["mem"] == "PermissionError" and results["environ"] == "PermissionError"
        assert info["hostile"].state == "serving" and "landlock" in info["hostile"].protections
        assert host.call(0x40000300, 0, rcx=1).rcx == 2
        # a misspelt hook is still rejected at discovery -- by the sandboxed process
        assert "svsm_handle_requets" in host.skipped["hostile_typo"]
        assert "RuntimeError" in host.skipped["hostile_boom"]  # an import that raises is skipped with its reason
    assert not installed.exists()


def test_modules_list_no_start_reads_manifests_in_the_sandbox(installed: pathlib.Path, capsys: Any) -> None:
    from svsm.kernel.cli._main import main

    assert main(["modules", "list", "--no-start", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (mod,) = [m for m in out["modules"] if m["name"] == "hostile"]
    assert mod["pid"] is None and mod["state"] != "serving" and mod["protocols"] == [0x40000300]
    assert "svsm_handle_requets" in out["skipped"]["hostile_typo"]
    assert "hostile_pkg" not in sys.modules and not installed.exists()


def test_inprocess_mode_still_imports_in_the_kernel(installed: pathlib.Path) -> None:
    """The documented exception: in-process mode (tests, debugging) has no sandbox at all."""
    from svsm.kernel.ipc import ModuleHost

    try:
        with ModuleHost.from_installed(mode="inprocess") as host:
            assert host.call(0x40000300, 0, rcx=5).rax == ResultCode.SUCCESS
        assert installed.exists() and "hostile_pkg" in sys.modules
    finally:
        sys.modules.pop("hostile_pkg", None)
        sys.modules.pop("hostile_typo_pkg", None)
        sys.modules.pop("hostile_boom_pkg", None)
