"""The module lifecycle table."""

from __future__ import annotations

import pytest

from svsm.kernel.ipc import TRANSITIONS, IllegalTransition, Lifecycle, ModuleEvent, ModuleState
from svsm.kernel.ipc._lifecycle import diagram


def test_happy_path_and_restart() -> None:
    lc = Lifecycle()
    for ev, st in [
        (ModuleEvent.HANDSHAKE_OK, ModuleState.HANDSHAKEN),
        (ModuleEvent.STARTED, ModuleState.SERVING),
        (ModuleEvent.FAILED, ModuleState.RESTARTING),
        (ModuleEvent.RESPAWNED, ModuleState.SPAWNED),
        (ModuleEvent.HANDSHAKE_OK, ModuleState.HANDSHAKEN),
        (ModuleEvent.STARTED, ModuleState.SERVING),
        (ModuleEvent.STOP_REQUESTED, ModuleState.DRAINING),
        (ModuleEvent.EXITED, ModuleState.DEAD),
    ]:
        assert lc.fire(ev) is st


def test_illegal_events_raise() -> None:
    lc = Lifecycle()
    with pytest.raises(IllegalTransition):
        lc.fire(ModuleEvent.STARTED)  # not handshaken yet
    lc.fire(ModuleEvent.DISABLED)
    for ev in ModuleEvent:
        with pytest.raises(IllegalTransition):
            lc.fire(ev)  # dead is final


def test_every_state_reachable_and_dead_reachable_from_all() -> None:
    reach = {ModuleState.SPAWNED}
    changed = True
    while changed:
        new = {dst for (src, _), dst in TRANSITIONS.items() if src in reach}
        changed = not new <= reach
        reach |= new
    assert reach == set(ModuleState)
    for st in ModuleState:
        if st is not ModuleState.DEAD:
            assert any(src is st and dst is ModuleState.DEAD for (src, _), dst in TRANSITIONS.items()) or st in (
                ModuleState.SPAWNED,
                ModuleState.HANDSHAKEN,
                ModuleState.SERVING,
            )
    assert "serving --> restarting: failed" in diagram()
