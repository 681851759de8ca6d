"""The run gate: pause waits for running guest steps; a fenced gate never admits one again."""

from __future__ import annotations

import threading
import time

import pytest

from svsm.kernel.migration import GateState, GuestFenced, RunGate
from svsm.sdk import FatalError


def test_pause_waits_for_the_step_in_progress_and_parks_new_ones() -> None:
    gate = RunGate()
    inside, release = threading.Event(), threading.Event()
    steps: list[str] = []

    def guest() -> None:
        with gate.running():
            inside.set()
            release.wait(5)
            steps.append("first")
        with gate.running(timeout=5):
            steps.append("second")

    th = threading.Thread(target=guest)
    th.start()
    inside.wait(5)
    paused = threading.Thread(target=gate.pause)
    paused.start()
    time.sleep(0.05)
    assert paused.is_alive()  # the running step has not finished
    release.set()
    paused.join(5)
    assert steps == ["first"] and gate.state is GateState.PAUSED
    gate.resume()
    th.join(5)
    assert steps == ["first", "second"]
    st = gate.statistics()
    assert st.pauses == 1 and st.entries == 2 and st.inside == 0


def test_fence_is_final() -> None:
    gate = RunGate(paused=True)
    errors: list[BaseException] = []

    def parked() -> None:
        try:
            with gate.running(timeout=5):
                pass
        except GuestFenced as exc:
            errors.append(exc)

    th = threading.Thread(target=parked)
    th.start()
    time.sleep(0.05)
    gate.fence()
    th.join(5)
    assert len(errors) == 1 and errors[0].code == GuestFenced.code
    with pytest.raises(GuestFenced):
        gate.resume()
    with pytest.raises(GuestFenced):
        gate.pause()
    with pytest.raises(GuestFenced):
        with gate.running():
            pass
    gate.fence()  # idempotent
    assert gate.state is GateState.FENCED


def test_a_stuck_vcpu_makes_pause_fail_loudly() -> None:
    gate = RunGate()
    inside, release = threading.Event(), threading.Event()

    def stuck() -> None:
        with gate.running():
            inside.set()
            release.wait(5)

    th = threading.Thread(target=stuck)
    th.start()
    inside.wait(5)
    with pytest.raises(FatalError):
        gate.pause(timeout=0.05)
    release.set()
    th.join(5)


def test_paused_gate_times_out_a_waiting_step() -> None:
    gate = RunGate(paused=True)
    with pytest.raises(TimeoutError):
        with gate.running(timeout=0.01):
            pass
