"""Fixtures for the migration engine tests: launched guest contexts on a simulated chip."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from svsm.kernel.hw.psp import Chip, SnpFirmware
from svsm.modules.migrate import MeasurementPolicy, MemoryVm, Role, make_channel, make_verifier


class Launched:
    """A launched guest context that produces evidence (report + chain)."""

    def __init__(self, fw: SnpFirmware, image: bytes = b"svsm" * 1024) -> None:
        self.fw = fw
        self.ctx = fw.launch_start(0x30000)
        fw.launch_update_normal(self.ctx, 0x1000, image)
        self.measurement = fw.launch_finish(self.ctx)
        self.ark = fw.chip.chain_pem()[0]

    def attester(self, report_data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.fw.build_report(self.ctx, report_data, 0), *self.fw.chip.chain_pem())


@pytest.fixture(scope="session")
def fw(tmp_path_factory: pytest.TempPathFactory) -> SnpFirmware:
    return SnpFirmware(Chip.load_or_create(tmp_path_factory.mktemp("chip")))


def run_pair(src_vm: Any, dst_vm: Any, src_id: Launched, dst_id: Launched, *, src_kwargs: dict | None = None,
             dst_kwargs: dict | None = None, wrap: Callable[[socket.socket], Any] | None = None) -> tuple[Any, Any]:
    """Run source and destination engines on a socket pair; :returns: (source result, destination result),
    each the report or the exception raised."""
    from svsm.modules.migrate import migrate_destination, migrate_source

    a, b = socket.socketpair()
    a.settimeout(30)
    b.settimeout(30)
    results: dict[str, Any] = {}
    s_ver = make_verifier(src_id.ark, MeasurementPolicy.same_as(src_id.measurement))
    d_ver = make_verifier(dst_id.ark, MeasurementPolicy.same_as(dst_id.measurement))

    def dst() -> None:
        try:
            results["d"] = migrate_destination(dst_vm, b, make_channel(dst_vm, Role.DESTINATION, d_ver, os.urandom),
                                               **(dst_kwargs or {}))
        except Exception as exc:  # noqa: BLE001 -- the test inspects it
            results["d"] = exc
        finally:
            b.close()

    th = threading.Thread(target=dst)
    th.start()
    stream = wrap(a) if wrap is not None else a
    try:
        results["s"] = migrate_source(src_vm, stream, make_channel(src_vm, Role.SOURCE, s_ver, os.urandom),
                                      **(src_kwargs or {}))
    except Exception as exc:  # noqa: BLE001
        results["s"] = exc
    finally:
        a.close()
    th.join(30)
    assert not th.is_alive()
    return results["s"], results["d"]


def memvm(ident: Launched, frames: int = 64, **kw: Any) -> MemoryVm:
    return MemoryVm(frames, ident.attester, **kw)


@pytest.fixture
def ident(fw: SnpFirmware) -> Callable[..., Launched]:
    """Factory: a launched context (same image -> same measurement)."""
    return lambda image=b"svsm" * 1024: Launched(fw, image)


@pytest.fixture
def migrate_pair() -> Callable[..., tuple[Any, Any]]:
    return run_pair


@pytest.fixture
def make_vm() -> Callable[..., MemoryVm]:
    return memvm
