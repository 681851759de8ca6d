"""The migration lifecycle of both ends: one transition table (house rule 1).

``(role, phase, event) -> next phase``; an event is an incoming message's tag or a local
step (``"sent-begin"``, ``"paused"``, ``"fenced"``...).  Anything not in the table is a protocol
violation and aborts the migration.  :func:`diagram` renders the table for docs/migration.md.

The commit point is the source's ``fenced`` step: before it, every failure resumes the guest on
the source; after it, the source never runs the guest again (two-phase commit: the
destination's ``prepared`` is its vote, the source's fence is the decision).
"""

from __future__ import annotations

import enum

from ._channel import ChannelError, Role

__all__ = ["Phase", "TRANSITIONS", "advance", "diagram"]


class Phase(enum.Enum):
    """Where one end of a migration is."""

    HANDSHAKE = "handshake"
    OFFERED = "offered"  # S: Begin sent, waiting for Ready
    PRECOPY = "precopy"  # S: rounds while the guest runs / D: receiving
    STOPPED = "stopped"  # S: guest paused, final pass and check
    CHECKING = "checking"  # D: state in, digests being compared
    PREPARED = "prepared"  # D: voted yes, waiting for the decision
    FENCED = "fenced"  # S: decided commit; the guest never runs here again
    DONE = "done"
    ABORTED = "aborted"


_S, _D = Role.SOURCE, Role.DESTINATION
P = Phase

TRANSITIONS: dict[tuple[Role, Phase, str], Phase] = {
    # source
    (_S, P.HANDSHAKE, "sent-begin"): P.OFFERED,
    (_S, P.OFFERED, "ready"): P.PRECOPY,
    (_S, P.PRECOPY, "paused"): P.STOPPED,
    (_S, P.STOPPED, "resend"): P.STOPPED,
    (_S, P.STOPPED, "prepared"): P.STOPPED,
    (_S, P.STOPPED, "fenced"): P.FENCED,
    (_S, P.FENCED, "committed"): P.DONE,
    # destination
    (_D, P.HANDSHAKE, "begin"): P.PRECOPY,
    (_D, P.PRECOPY, "pages"): P.PRECOPY,
    (_D, P.PRECOPY, "round-end"): P.PRECOPY,
    (_D, P.PRECOPY, "machine-state"): P.CHECKING,
    (_D, P.CHECKING, "pages"): P.CHECKING,
    (_D, P.CHECKING, "round-end"): P.CHECKING,
    (_D, P.CHECKING, "digests"): P.CHECKING,
    (_D, P.CHECKING, "prepared"): P.PREPARED,
    (_D, P.PREPARED, "commit"): P.DONE,
}
# An abort is accepted from the peer (or decided locally) in every phase before the decision.
for _role, _phases in ((_S, (P.HANDSHAKE, P.OFFERED, P.PRECOPY, P.STOPPED)),
                       (_D, (P.HANDSHAKE, P.PRECOPY, P.CHECKING, P.PREPARED))):  # fmt: skip
    for _p in _phases:
        TRANSITIONS[(_role, _p, "abort")] = P.ABORTED


def advance(role: Role, phase: Phase, event: str) -> Phase:
    """The next phase.  :raises ChannelError: ``event`` is not allowed now (the peer misbehaved)."""
    nxt = TRANSITIONS.get((role, phase, event))
    if nxt is None:
        raise ChannelError(f"unexpected {event} in phase {phase.value}")
    return nxt


def diagram(role: Role | None = None) -> str:
    """The table as Mermaid ``stateDiagram`` text: one diagram for ``role``, or both (blank line between)."""
    if role is None:
        return "\n\n".join(diagram(r) for r in (_S, _D))
    out = ["stateDiagram-v2"]
    for (r, a, ev), b in TRANSITIONS.items():
        if r is role:
            out.append(f"    {a.value} --> {b.value}: {ev}")
    return "\n".join(out)
