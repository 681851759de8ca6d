"""``svsm tpm serve`` plumbing: argument parsing and the state-file device (no processes)."""

from __future__ import annotations

import pathlib

import pytest

from svsm.kernel.cli import _main
from svsm.kernel.cli.tpm import STATE_FILE, StateFileDevice


class FakeEngine:
    """Counts commands; its 'state' is the number of state-changing commands seen."""

    def __init__(self, *, state: bytes | None = None) -> None:
        self.count = int(state or b"0")
        self.dirty = False
        self.resets = 0

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        if command == b"write":
            self.count += 1
            self.dirty = True
        return b"\x80\x01\x00\x00\x00\x0a\x00\x00\x00\x00"

    def save_state(self) -> bytes:
        return str(self.count).encode()

    def reset(self) -> None:
        self.resets += 1


def test_parser_defaults_and_choices() -> None:
    parser = _main.build_parser()
    args = parser.parse_args(["tpm", "serve"])
    assert (args.port, args.transport, args.direct, args.state) == (2321, "mssim", False, None)
    args = parser.parse_args(["tpm", "serve", "--transport", "swtpm", "--direct", "--port", "0", "--state", "/x"])
    assert (args.port, args.transport, args.direct, args.state) == (0, "swtpm", True, pathlib.Path("/x"))
    with pytest.raises(SystemExit):
        parser.parse_args(["tpm", "serve", "--transport", "tcp"])


def test_state_file_saved_only_when_dirty_and_reloaded(tmp_path: pathlib.Path) -> None:
    dev = StateFileDevice(FakeEngine, tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == b"0" and dev.saves == 1
    dev.execute(b"read")
    assert dev.saves == 1
    dev.execute(b"write")
    dev.execute(b"write")
    assert dev.saves == 3 and (tmp_path / STATE_FILE).read_bytes() == b"2"
    again = StateFileDevice(FakeEngine, tmp_path)
    assert again.engine.count == 2 and again.saves == 0
    again.reset()
    assert again.engine.resets == 1
    assert not hasattr(again, "power_on")  # the fake has no such signal, so neither does the device
    assert list(tmp_path.iterdir()) == [tmp_path / STATE_FILE]  # no temp files left behind


def test_in_memory_without_state_dir() -> None:
    dev = StateFileDevice(FakeEngine, None)
    dev.execute(b"write")
    assert dev.saves == 0 and dev.engine.count == 1


def test_corrupt_state_is_a_usage_error_and_left_alone(tmp_path: pathlib.Path) -> None:
    from svsm.kernel.cli._main import UsageError
    from svsm.sdk import InvalidRequest

    class Picky(FakeEngine):
        def __init__(self, *, state: bytes | None = None) -> None:
            if state == b"garbage":
                raise InvalidRequest("bad state")
            super().__init__(state=state)

    (tmp_path / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(UsageError):
        StateFileDevice(Picky, tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == b"garbage"
