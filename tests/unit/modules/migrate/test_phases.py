"""The migration lifecycle table: legal orders only; no abort after the commit decision."""

from __future__ import annotations

import pathlib

import pytest

from svsm.modules.migrate import ChannelError, Phase, Role, diagram
from svsm.modules.migrate._phases import TRANSITIONS, advance


def test_source_happy_path() -> None:
    p = Phase.HANDSHAKE
    for ev in ("sent-begin", "ready", "paused", "resend", "prepared", "fenced", "committed"):
        p = advance(Role.SOURCE, p, ev)
    assert p is Phase.DONE


def test_destination_happy_path() -> None:
    p = Phase.HANDSHAKE
    for ev in ("begin", "pages", "round-end", "machine-state", "pages", "digests", "prepared", "commit"):
        p = advance(Role.DESTINATION, p, ev)
    assert p is Phase.DONE


@pytest.mark.parametrize(
    "role,phase,event",
    [
        (Role.DESTINATION, Phase.HANDSHAKE, "commit"),  # commit before anything arrived
        (Role.DESTINATION, Phase.PRECOPY, "commit"),  # commit without a Prepared vote
        (Role.DESTINATION, Phase.CHECKING, "begin"),
        (Role.SOURCE, Phase.PRECOPY, "prepared"),  # a vote before the guest was stopped
        (Role.SOURCE, Phase.FENCED, "abort"),  # the decision is final
        (Role.SOURCE, Phase.DONE, "resend"),
    ],
)
def test_illegal_events_raise(role, phase, event) -> None:
    with pytest.raises(ChannelError):
        advance(role, phase, event)


def test_abort_allowed_exactly_before_the_decision() -> None:
    aborts = {(r, p) for (r, p, e) in TRANSITIONS if e == "abort"}
    assert (Role.SOURCE, Phase.FENCED) not in aborts and (Role.DESTINATION, Phase.DONE) not in aborts
    assert (Role.DESTINATION, Phase.PREPARED) in aborts and (Role.SOURCE, Phase.STOPPED) in aborts


def test_diagram_names_every_transition() -> None:
    text = diagram()
    assert text.count("-->") == len(TRANSITIONS)
    assert "stopped --> fenced: fenced" in diagram(Role.SOURCE) and "fenced" not in diagram(Role.DESTINATION)


def test_docs_show_the_current_table() -> None:
    doc = (pathlib.Path(__file__).resolve().parents[4] / "docs" / "migration.md").read_text(encoding="utf-8")
    for role in (Role.SOURCE, Role.DESTINATION):
        assert f"```mermaid\n{diagram(role)}\n```" in doc, "docs/migration.md is stale: paste diagram(role)"
