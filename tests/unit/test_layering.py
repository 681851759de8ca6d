"""DESIGN.md's import rules and each package's public surface (house rule 5).

Each check runs in a fresh interpreter so one import cannot hide another's side effects.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import svsm.kernel
import svsm.modules
import svsm.sdk

ROOTS = {
    "kernel": pathlib.Path(svsm.kernel.__file__).parent,
    "sdk": pathlib.Path(svsm.sdk.__file__).parent,
    "modules": pathlib.Path(svsm.modules.__file__).parent,
}


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, id(node) in top))
    return out


def _files(root: str) -> list[pathlib.Path]:
    return sorted(p for p in ROOTS[root].rglob("*.py") if "templates" not in p.parts)


@pytest.mark.parametrize("path", _files("modules"), ids=lambda p: str(p.relative_to(ROOTS["modules"])))
def test_modules_import_only_sdk(path: pathlib.Path) -> None:
    bad = [m for m, _ in _imports(path) if m.startswith("svsm.kernel")]
    assert not bad, f"{path} imports {bad}; modules may import svsm.sdk only"


@pytest.mark.parametrize("path", _files("kernel"), ids=lambda p: str(p.relative_to(ROOTS["kernel"])))
def test_kernel_never_imports_modules(path: pathlib.Path) -> None:
    bad = [m for m, _ in _imports(path) if m.startswith("svsm.modules")]
    assert not bad, f"{path} imports {bad}; the kernel reaches modules only through entry points"


@pytest.mark.parametrize("path", _files("sdk"), ids=lambda p: str(p.relative_to(ROOTS["sdk"])))
def test_sdk_imports_no_kernel_at_import_time(path: pathlib.Path) -> None:
    imports = _imports(path)
    assert not [m for m, _ in imports if m.startswith("svsm.modules")]
    top_level_kernel = [m for m, top in imports if top and m.startswith("svsm.kernel")]
    assert not top_level_kernel, f"{path} imports the kernel at import time: {top_level_kernel}"


def test_sdk_alone_does_not_load_kernel() -> None:
    code = "import sys, svsm.sdk, svsm.sdk.testing; assert not [m for m in sys.modules if m.startswith('svsm.kernel')]"
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)


def _packages() -> list[str]:
    names = []
    for prefix, root in ROOTS.items():
        for init in sorted(root.rglob("__init__.py")):
            if "templates" in init.parts:
                continue
            rel = init.parent.relative_to(root).parts
            names.append(".".join(("svsm", prefix, *rel)))
    return names


@pytest.mark.parametrize("name", _packages())
def test_package_imports_alone_and_all_is_consistent(name: str) -> None:
    code = (
        f"import importlib; m = importlib.import_module({name!r}); "
        "assert isinstance(m.__all__, (list, tuple)), 'no __all__'; "
        "missing = [n for n in m.__all__ if not hasattr(m, n)]; "
        "assert not missing, missing"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
