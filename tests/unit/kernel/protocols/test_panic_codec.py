"""The panic path in isolation: keys wiped first, one termination request, SvsmPanic raised."""

from __future__ import annotations

import logging

import pytest

from svsm.kernel._panic import Panicker, SvsmPanic, TerminationReason, termination_request_msr
from svsm.sdk import FatalError


def test_termination_msr_layout() -> None:
    assert termination_request_msr(TerminationReason.GENERAL) == 0x100
    assert termination_request_msr(TerminationReason.SNP_FEATURES) == 0x100 | 2 << 16


def test_panic_sequence(caplog: pytest.LogCaptureFixture) -> None:
    events: list[object] = []
    p = Panicker(lambda: events.append("wipe"), lambda cpu, v: events.append((cpu, v)))
    caplog.set_level(logging.CRITICAL, "svsm.kernel.panic")
    try:
        raise KeyError("broken invariant")
    except KeyError as exc:
        with pytest.raises(SvsmPanic) as ei:
            p.panic(3, exc)
    assert isinstance(ei.value, FatalError) and ei.value.cpu == 3
    assert events == ["wipe", (3, 0x100)]
    assert any("KeyError" in line for line in ei.value.backtrace)
    assert "---BACKTRACE---" in caplog.text and "Panic on CPU[3]" in caplog.text
    with pytest.raises(SvsmPanic):  # a second panic (another vCPU) re-raises, no second wipe
        p.panic(1, "again")
    assert events == ["wipe", (3, 0x100)]
