"""``svsm new-module``: the scaffold is complete and valid."""

from __future__ import annotations

import pathlib
import tomllib

import pytest

from svsm.kernel.cli import ExitCode, main


def test_scaffold_layout(tmp_path: pathlib.Path) -> None:
    assert main(["new-module", "acme_tpm", "--dir", str(tmp_path), "--protocol", "0x40000042"]) == ExitCode.OK
    root = tmp_path / "acme_tpm"
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["svsm.modules"] == {"acme_tpm": "svsm_acme_tpm:AcmeTpmModule"}
    src = (root / "svsm_acme_tpm" / "__init__.py").read_text()
    assert "PROTOCOL = 0x40000042" in src and "import svsm.kernel" not in src
    compile(src, "init", "exec")
    compile((root / "tests" / "test_module.py").read_text(), "test", "exec")


@pytest.mark.parametrize("args", [["new-module", "Bad-Name"], ["new-module", "ok", "--protocol", "5"]])
def test_bad_input_is_a_usage_error(tmp_path: pathlib.Path, args: list[str]) -> None:
    assert main([*args, "--dir", str(tmp_path)]) == ExitCode.USAGE


def test_refuses_to_overwrite(tmp_path: pathlib.Path) -> None:
    (tmp_path / "dup").mkdir()
    assert main(["new-module", "dup", "--dir", str(tmp_path)]) == ExitCode.USAGE
