"""``svsm anchor serve`` registration and argument errors (the serving path: test_anchor_psp.py)."""

from __future__ import annotations

from svsm.kernel.cli._main import build_parser, main


def test_anchor_command_is_registered_through_the_entry_point() -> None:
    args = build_parser().parse_args(["anchor", "serve", "--state", "/tmp/x", "--chip-dir", "/tmp/chip"])
    assert args.anchor_command == "serve" and args.lease_ttl == 30.0 and args.listen.endswith(":7095")


def test_missing_trust_roots_is_a_usage_error(tmp_path, capsys) -> None:
    assert main(["anchor", "serve", "--state", str(tmp_path / "a")]) == 2
    assert "--chip-dir" in capsys.readouterr().err


def test_unreadable_roots_are_a_usage_error(tmp_path, capsys) -> None:
    assert main(["anchor", "serve", "--state", str(tmp_path / "a"), "--chip-dir", str(tmp_path / "none")]) == 2
