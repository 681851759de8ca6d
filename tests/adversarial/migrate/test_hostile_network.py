"""A man in the middle replays, reorders, drops or flips migration frames: the migration aborts,
the guest keeps running on the source, and the destination never runs it."""

from __future__ import annotations

import pytest

from svsm.modules.migrate import MigrationAborted, MigrationInDoubt, MigrationReport

#: Frames from the source: 0 Hello, 1 SourceAttest, 2 Begin, 3.. Pages of round 0.
TARGET = 4


def _replay(i, f):
    return [f, f] if i == TARGET else [f]


def _drop(i, f):
    return [] if i == TARGET else [f]


def _flip(i, f):
    if i != TARGET:
        return [f]
    b = bytearray(f)
    b[len(b) // 2] ^= 0x01
    return [bytes(b)]


class _Reorder:
    def __init__(self) -> None:
        self.held = None

    def __call__(self, i, f):
        if i == TARGET:
            self.held = f
            return []
        if i == TARGET + 1:
            return [f, self.held]
        return [f]


@pytest.mark.parametrize("attack", [_replay, _drop, _flip, _Reorder()], ids=["replay", "drop", "flip", "reorder"])
def test_tampered_stream_aborts_and_the_source_keeps_the_guest(scene, proxy, attack) -> None:
    holder = {}

    def through(port: int) -> int:
        holder["p"] = proxy(port, attack)
        return holder["p"].port

    s, d = scene.migrate(through=through)
    assert isinstance(s, MigrationAborted), s
    assert isinstance(d, MigrationAborted), d
    assert holder["p"].frames > TARGET
    assert scene.svm.gate.state.value == "running" and not scene.svm.fenced
    assert scene.dvm.gate.state.value == "paused"
    assert scene.guest_still_runs_on_source()


def test_lost_commit_leaves_the_destination_in_doubt_and_the_source_fenced(scene, proxy) -> None:
    from svsm.modules.migrate._wire import CODES, Commit

    def drop_commit(i, f):
        # a record frame: u32 length, kind 0x02, u8 type, u64 seq, ciphertext
        if len(f) > 5 and f[4] == 0x02 and f[5] == CODES[Commit]:
            raise OSError("the network dies exactly at the commit")
        return [f]

    s, d = scene.migrate(through=lambda port: proxy(port, drop_commit).port)
    assert isinstance(d, MigrationInDoubt), d
    assert isinstance(s, MigrationReport) and s.result == "fenced" and s.reason
    assert scene.svm.fenced and scene.dvm.gate.state.value == "paused"  # nobody runs the guest


def test_tampered_vote_from_the_destination_resumes_the_source(scene, proxy) -> None:
    from svsm.modules.migrate._wire import CODES, Prepared

    def flip_prepared(i, f):
        if len(f) > 5 and f[4] == 0x02 and f[5] == CODES[Prepared]:
            b = bytearray(f)
            b[-1] ^= 0x80
            return [bytes(b)]
        return [f]

    s, d = scene.migrate(through=lambda port: proxy(port, lambda i, f: [f], back=flip_prepared).port)
    assert isinstance(s, MigrationAborted), s
    # the destination voted and then lost the source: in doubt, it does not run the guest either
    assert isinstance(d, MigrationInDoubt), d
    assert not scene.svm.fenced and scene.dvm.gate.state.value == "paused"
    assert scene.guest_still_runs_on_source()
