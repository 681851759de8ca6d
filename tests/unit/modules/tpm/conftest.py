"""Fixtures for the TPM engine tests: a started engine, a raw command helper, and ESAPI over a Python TCTI."""

from __future__ import annotations

import pathlib
import sys
from typing import Callable, Iterator

import pytest

from svsm.modules.tpm import Tpm

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # tpm_test_helpers (importlib mode has no rootdir imports)
from tpm_test_helpers import FakeClock, cmd, seeded_rng  # noqa: E402


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tpm(clock: FakeClock) -> Tpm:
    t = Tpm(rng=seeded_rng(), clock=clock)
    assert t.execute(bytes.fromhex("80010000000c000001440000")) == bytes.fromhex("80010000000a00000000")
    return t


@pytest.fixture
def run(tpm: Tpm) -> Callable[..., bytes]:
    """run(cc, handles, params, sessions) -> response bytes."""
    def _run(cc: int, handles: tuple[int, ...] = (), params: bytes = b"", sessions: bytes | None = None) -> bytes:
        return tpm.execute(cmd(cc, handles, params, sessions))
    return _run


@pytest.fixture
def esys(tpm: Tpm) -> Iterator[object]:
    """tpm2-pytss ESAPI driving the engine in-process through a Python TCTI."""
    from svsm.sdk.testing import require_module
    require_module("tpm2_pytss")
    from tpm2_pytss import ESAPI
    from tpm2_pytss.TCTI import PyTCTI

    class EngineTCTI(PyTCTI):
        def __init__(self) -> None:
            super().__init__(max_size=4096)
            self._rsp = b""

        def do_transmit(self, command: bytes) -> None:
            self._rsp = tpm.execute(bytes(command))

        def do_receive(self, timeout: int) -> bytes:
            return self._rsp

    with ESAPI(EngineTCTI()) as e:
        yield e
