"""A module's lifecycle: every state, event and transition, in this one file (h11's ``_state.py``).

The table does not know about processes or sockets; :class:`~svsm.kernel.ipc.ModuleSupervisor`
feeds it events and asks it where the module is.  ``docs/modules.md``'s diagram is drawn
from :data:`TRANSITIONS` by :func:`diagram`.
"""

from __future__ import annotations

import enum

from svsm.sdk import SvsmError

__all__ = ["ModuleState", "ModuleEvent", "TRANSITIONS", "IllegalTransition", "Lifecycle", "diagram"]


class ModuleState(enum.Enum):
    """Where a module is."""

    #: The process exists; the handshake has not finished.
    SPAWNED = "spawned"
    #: ABI versions agreed; ``svsm_module_start`` not yet done.
    HANDSHAKEN = "handshaken"
    #: Serving guest calls.
    SERVING = "serving"
    #: Stopping: no new calls, ``svsm_module_stop`` running.
    DRAINING = "draining"
    #: Crashed or hung; waiting for its backoff before a new process is spawned.
    RESTARTING = "restarting"
    #: Gone for good: stopped, or disabled after a crash loop.
    DEAD = "dead"


class ModuleEvent(enum.Enum):
    """What can happen to a module."""

    HANDSHAKE_OK = "handshake_ok"
    STARTED = "started"
    STOP_REQUESTED = "stop_requested"
    EXITED = "exited"
    #: The process died, hung past its deadline or misbehaved too often.
    FAILED = "failed"
    #: Too many failures within the crash-loop window.
    DISABLED = "disabled"
    RESPAWNED = "respawned"


S, E = ModuleState, ModuleEvent

#: (state, event) -> next state.  Anything missing is illegal.
TRANSITIONS: dict[tuple[ModuleState, ModuleEvent], ModuleState] = {
    (S.SPAWNED, E.HANDSHAKE_OK): S.HANDSHAKEN,
    (S.SPAWNED, E.FAILED): S.RESTARTING,
    (S.SPAWNED, E.DISABLED): S.DEAD,
    (S.SPAWNED, E.STOP_REQUESTED): S.DRAINING,
    (S.HANDSHAKEN, E.STARTED): S.SERVING,
    (S.HANDSHAKEN, E.FAILED): S.RESTARTING,
    (S.HANDSHAKEN, E.DISABLED): S.DEAD,
    (S.HANDSHAKEN, E.STOP_REQUESTED): S.DRAINING,
    (S.SERVING, E.STOP_REQUESTED): S.DRAINING,
    (S.SERVING, E.FAILED): S.RESTARTING,
    (S.SERVING, E.DISABLED): S.DEAD,
    (S.DRAINING, E.EXITED): S.DEAD,
    (S.DRAINING, E.FAILED): S.DEAD,
    (S.RESTARTING, E.RESPAWNED): S.SPAWNED,
    (S.RESTARTING, E.DISABLED): S.DEAD,
    (S.RESTARTING, E.STOP_REQUESTED): S.DEAD,
}


class IllegalTransition(SvsmError):
    """An event that the lifecycle table does not allow in the current state (a kernel bug)."""


class Lifecycle:
    """The state of one module, moved only through :data:`TRANSITIONS`."""

    def __init__(self) -> None:
        self.state = ModuleState.SPAWNED
        self.history: list[tuple[ModuleState, ModuleEvent, ModuleState]] = []

    def fire(self, event: ModuleEvent) -> ModuleState:
        """Apply ``event``.  :raises IllegalTransition: not allowed now."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise IllegalTransition(f"{event.value} in state {self.state.value}")
        self.history.append((self.state, event, nxt))
        del self.history[:-64]
        self.state = nxt
        return nxt


def diagram() -> str:
    """The lifecycle as a Mermaid state diagram (for docs)."""
    lines = ["stateDiagram-v2", f"    [*] --> {ModuleState.SPAWNED.value}"]
    for (src, ev), dst in TRANSITIONS.items():
        lines.append(f"    {src.value} --> {dst.value}: {ev.value}")
    lines.append(f"    {ModuleState.DEAD.value} --> [*]")
    return "\n".join(lines)
