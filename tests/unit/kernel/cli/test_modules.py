"""``svsm modules list/call`` without starting processes (in-process modules, manifests only)."""

from __future__ import annotations

import json
from typing import Any

from svsm.kernel.cli import ExitCode, main

ALL = ["--block", "tpm", "--block", "persist", "--block", "migrate"]


def test_list_json_no_start(capsys: Any) -> None:
    assert main(["modules", "list", "--json", "--no-start", *ALL]) == ExitCode.OK
    out = json.loads(capsys.readouterr().out)
    assert out["modules"] == [] and out["skipped"]["tpm"] == "blocked"


def test_bad_policy_is_a_usage_error(tmp_path: Any) -> None:
    bad = tmp_path / "policy.json"
    bad.write_text('{"deny_modules": "tpm", "unknown": 1}')
    assert main(["modules", "list", "--policy", str(bad), *ALL]) == ExitCode.USAGE


def test_call_unserved_protocol_fails(capsys: Any) -> None:
    assert main(["modules", "call", "0x40000999", "0", "--json", "--in-process", *ALL]) == ExitCode.FAILED
    assert json.loads(capsys.readouterr().out)["rax"] == 0x8000_0001


def test_list_table_renders(capsys: Any) -> None:
    assert main(["modules", "list", "--no-start", *ALL]) == ExitCode.OK
    assert "svsm modules" in capsys.readouterr().out
