"""Session state: the lifecycle table, policy restart, context marshalling."""

from __future__ import annotations

import pytest

from svsm.modules.tpm import TpmError
from svsm.modules.tpm._sessions import SESSION_TRANSITIONS, Session


def make() -> Session:
    return Session(0x03000001, 1, 0x000B, b"n" * 16, b"k" * 32, None, (0x0006, 128, 0x0043))


def test_lifecycle_table() -> None:
    s = make()
    for event, state in (("use", "loaded"), ("save", "saved"), ("load", "loaded"), ("flush", "flushed")):
        s.transition(event)
        assert s.state == state
    with pytest.raises(TpmError):
        s.transition("load")  # nothing leaves "flushed"
    assert {st for (st, _ev) in SESSION_TRANSITIONS} == {"loaded", "saved"}


def test_restart_clears_policy_state() -> None:
    s = make()
    s.extend_policy(b"x")
    s.cc, s.auth_value, s.cp_hash, s.timeout, s.template_hash = 0x15E, True, b"c" * 32, 5.0, b"t" * 32
    s.restart()
    assert (s.policy, s.cc, s.auth_value, s.cp_hash, s.timeout, s.template_hash) == (bytes(32), 0, False, b"", None, b"")


def test_marshal_round_trip_keeps_everything() -> None:
    s = make()
    s.extend_policy(b"abc")
    s.cc, s.password, s.pcr_counter, s.timeout, s.nv_written = 0x15E, True, 7, 12.5, False
    s.audit_digest, s.seq, s.locality = b"a" * 32, 9, 3
    t = Session.unmarshal(s.marshal())
    for attr in Session.__slots__:
        assert getattr(t, attr) == getattr(s, attr), attr
