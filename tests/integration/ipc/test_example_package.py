"""Third-party modules as users get them: pip-installed into a fresh venv, discovered, sandboxed, called.

The fresh venv reaches pysvsm and its dependencies through a ``.pth`` that adds this
interpreter's site-packages (no network); the module packages are built and installed
by pip from their own pyproject (``--no-deps --no-build-isolation``).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import tempfile
from typing import Any

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "echo-module"
OTHERS = ["--block", "tpm", "--block", "persist", "--block", "migrate"]


@pytest.fixture(scope="module")
def venv() -> Any:
    root = pathlib.Path(tempfile.mkdtemp(prefix="svsm-venv-"))
    os.chmod(root, 0o755)  # module processes may run under another uid
    try:
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root / "v")], check=True)  # type: ignore[attr-defined]
        py = root / "v" / "bin" / "python"
        purelib = subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
        ).stdout.strip()
        here = site.getsitepackages()[0]
        pathlib.Path(purelib, "zz_pysvsm_host.pth").write_text(f"import site; site.addsitedir({here!r})\n")
        yield root, py
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _pip_install(py: pathlib.Path, src: pathlib.Path, work: pathlib.Path) -> None:
    copy = work / src.name
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-build-isolation", str(copy)],
        check=True,
        cwd=work,
    )


def _svsm(py: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from svsm.kernel.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([py, "-c", code, *args], capture_output=True, text=True, cwd="/", timeout=300)


def test_example_package_installs_and_serves(venv: Any) -> None:
    root, py = venv
    _pip_install(py, EXAMPLE, root)
    out = _svsm(py, "modules", "list", "--json", *OTHERS)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    (echo,) = [m for m in listing["modules"] if m["name"] == "echo"]
    assert echo["state"] == "serving" and echo["mode"] == "process"
    assert {"seccomp", "landlock", "no-new-privs", "fds", "env"} <= set(echo["protections"])
    assert echo["protocols"] == [0x4000_0001]
    assert "entry point echo" in echo["source"]
    call = _svsm(py, "modules", "call", "0x40000001", "0", "--rcx", "41", "--json", *OTHERS)
    assert call.returncode == 0, call.stderr
    assert json.loads(call.stdout)["rcx"] == 41
    # the package's own tests, against the installed copy, through the SDK's pytest plugin
    tests = subprocess.run(
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(root), str(EXAMPLE / "tests")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_scaffolded_module_installs_lists_and_passes_its_tests(venv: Any) -> None:
    root, py = venv
    work = root / "scaffold"
    work.mkdir()
    made = _svsm(py, "new-module", "hello_vendor", "--dir", str(work))
    assert made.returncode == 0, made.stderr
    tests = subprocess.run(
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=work / "hello_vendor",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(work / "hello_vendor")},
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    _pip_install(py, work / "hello_vendor", root)
    out = _svsm(py, "modules", "list", "--json", "--no-start", *OTHERS)
    assert out.returncode == 0, out.stderr
    listed = {m["name"]: m for m in json.loads(out.stdout)["modules"]}
    assert "hello_vendor" in listed and listed["hello_vendor"]["requested"] == ["log", "storage"]
