"""TpmPlatform: power/NV state, signal forwarding, serialisation, statistics."""

from __future__ import annotations

import threading
import time

import pytest

from svsm.sdk.tpm import TpmPlatform
from svsm.sdk.tpm._platform import SignalNotSupported, failure_response

OK = bytes.fromhex("80010000000a00000000")


class Minimal:
    """Only execute(): no signals at all."""

    def __init__(self) -> None:
        self.n = 0

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        self.n += 1
        return OK


class Slow(Minimal):
    """Detects overlapping execute() calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.overlap = False

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        self.inside += 1
        self.overlap |= self.inside > 1
        time.sleep(0.001)
        self.inside -= 1
        return super().execute(command, locality)


def test_power_gates_commands_and_counts() -> None:
    plat = TpmPlatform(Minimal(), powered=False)
    assert plat.execute(b"x" * 10) is None
    plat.power_on()
    assert plat.execute(b"x" * 12) == OK
    st = plat.statistics()
    assert (st.powered, st.commands, st.command_bytes, st.response_bytes, st.refused_powered_off) == (True, 1, 12, 10, 1)


def test_reset_without_device_hook_power_cycles_and_hashing_is_unsupported() -> None:
    calls: list[str] = []

    class Cycler(Minimal):
        def power_on(self) -> None:
            calls.append("on")

        def power_off(self) -> None:
            calls.append("off")

    plat = TpmPlatform(Cycler())
    plat.reset()
    assert calls == ["on", "off", "on"]
    plat.power_off()
    plat.reset()  # no power: nothing happens
    assert calls == ["on", "off", "on", "off"]
    with pytest.raises(SignalNotSupported):
        plat.hash_start()


def test_default_locality_comes_from_the_platform() -> None:
    seen: list[int] = []

    class Loc(Minimal):
        def execute(self, command: bytes, locality: int = 0) -> bytes:
            seen.append(locality)
            return OK

    plat = TpmPlatform(Loc())
    plat.locality = 3
    plat.execute(b"c")
    plat.execute(b"c", 1)
    assert seen == [3, 1]


def test_commands_are_serialised() -> None:
    dev = Slow()
    plat = TpmPlatform(dev)
    threads = [threading.Thread(target=lambda: [plat.execute(b"c") for _ in range(5)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dev.n == 20 and not dev.overlap


def test_failure_response_layout() -> None:
    assert failure_response() == bytes.fromhex("80010000000a00000101")


def test_device_refusal_becomes_tpm_failure_response() -> None:
    from svsm.sdk import Busy

    class Refusing(Minimal):
        def execute(self, command: bytes, locality: int = 0) -> bytes:
            raise Busy("module restarting")

    plat = TpmPlatform(Refusing())
    assert plat.execute(b"c" * 10) == failure_response()
    assert plat.statistics().device_errors == 1
