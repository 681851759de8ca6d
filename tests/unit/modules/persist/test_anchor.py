"""Rollback and clone detection with the freshness anchor (store + anchor, fake PSP reports)."""

from __future__ import annotations

import itertools
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.modules.persist import (AnchorError, AnchorRequired, CloneDetected, RollbackDetected,
                                  StoreUnavailable)
from svsm.modules.persist._anchor import AnchorClient, TcpTransport
from svsm.modules.persist._anchor_proto import ProtocolViolation, decode, parse_request
from svsm.modules.persist._anchor_service import AnchorService, serve_tcp

SEC = 10**9


class World:
    """One anchor service, its clock, and a way to make clients for a given PSP."""

    def __init__(self, env, psp, tmp_path=None, **kw) -> None:
        self.env, self.psp = env, psp
        self.now = 0
        self.key = Ed25519PrivateKey.generate()
        self.kw = kw
        self.path = tmp_path / "anchor.json" if tmp_path else None
        self.restart()

    def restart(self) -> None:
        self.service = AnchorService(self.key, self.psp.verifier(), clock=lambda: self.now, rng=self.env.rng,
                                     state_path=self.path, **self.kw)

    def client(self, psp=None, exchange=None, anchor_key=None) -> AnchorClient:
        return AnchorClient(exchange or self.service.handle, (psp or self.psp).attest, rng=self.env.rng,
                            anchor_key=anchor_key)


@pytest.fixture
def world(env, fake_psp, tmp_path) -> World:
    return World(env, fake_psp(), tmp_path)


def test_anchored_store_round_trip(env, world) -> None:
    s = env.open(anchor=world.client())
    s.put("tpm", "nv", b"1")
    assert s.statistics().anchored
    s.close()
    s2 = env.open(anchor=world.client())
    assert s2.generation == 2 and s2.get("tpm", "nv") == b"1"
    assert world.service.statistics().identities == 1
    s2.close()
    client = world.client()
    env.open(anchor=client)
    st = client.statistics()
    assert st.holds_lease and st.failures == 0 and st.calls >= 1


def test_replayed_older_image_is_detected(env, world) -> None:
    s = env.open(anchor=world.client())
    s.put("tpm", "nv", b"old")
    old = env.image.snapshot()
    s.put("tpm", "nv", b"new")
    s.close()
    env.image.restore(old)
    with pytest.raises(RollbackDetected):
        env.open(anchor=world.client())


def test_a_refused_open_releases_its_lease_so_retries_report_the_same_reason(env, world) -> None:
    s = env.open(anchor=world.client())
    s.put("tpm", "nv", b"old")
    old = env.image.snapshot()
    s.put("tpm", "nv", b"new")
    s.close()
    env.image.restore(old)
    for _ in range(3):  # a supervisor restarting the module sees rollback each time, never "clone"
        with pytest.raises(RollbackDetected):
            env.open(anchor=world.client())
    assert world.service.statistics().live_leases == 0


def test_destroyed_newest_superblock_is_a_detected_rollback(env, world) -> None:
    s = env.open(anchor=world.client())
    s.put("tpm", "nv", b"1")
    s.put("tpm", "nv", b"2")
    s.close()
    env.image.write_block(s.generation % 2, b"\xff" * 4096)
    with pytest.raises(RollbackDetected):
        env.open(anchor=world.client())


def test_second_instance_is_refused_while_the_first_runs(env, world) -> None:
    first = env.open(anchor=world.client())
    first.put("tpm", "nv", b"1")
    clone_image = env.image.snapshot()  # the host copies the state directory
    from svsm.kernel.hw.blockdev import BlockDevice, MemoryImage

    img2 = MemoryImage(env.image.num_blocks())
    img2.restore(clone_image)
    with pytest.raises(CloneDetected):
        env.open(dev=BlockDevice(img2), anchor=world.client())
    first.put("tpm", "nv", b"2")  # the first keeps working
    assert world.service.statistics().clones == 1


def test_expired_lease_lets_a_new_instance_in_and_fences_the_old_one(env, world) -> None:
    first = env.open(anchor=world.client())
    world.now += 31 * SEC  # the first stopped heartbeating
    from svsm.kernel.hw.blockdev import BlockDevice, MemoryImage

    img2 = MemoryImage(env.image.num_blocks())
    img2.restore(env.image.snapshot())
    second = env.open(dev=BlockDevice(img2), anchor=world.client())
    second.put("tpm", "nv", b"from second")
    with pytest.raises(CloneDetected):
        first.put("tpm", "nv", b"from first")  # fenced: its commit is never acknowledged
    with pytest.raises(StoreUnavailable):
        first.get("tpm", "nv")


def test_a_restarted_module_reacquires_its_cvms_lease(env, world) -> None:
    first = world.client()
    env.open(anchor=first)  # then the module process crashes: no release
    with pytest.raises(CloneDetected):
        env.open(anchor=world.client())  # an instance without the lease: a clone
    again = env.open(anchor=AnchorClient(world.service.handle, world.psp.attest, rng=env.rng, lease=first.lease))
    again.put("tpm", "nv", b"after restart")


def test_heartbeat_keeps_the_lease(env, world) -> None:
    first = env.open(anchor=world.client())
    for _ in range(3):
        world.now += 20 * SEC
        first.heartbeat()
    with pytest.raises(CloneDetected):
        env.open(anchor=world.client())


def test_anchor_that_forgot_the_store_is_not_trusted(env, world) -> None:
    s = env.open(anchor=world.client())
    s.put("tpm", "nv", b"1")
    s.close()
    world.path = None
    world.restart()  # same key, state lost
    with pytest.raises(RollbackDetected):
        env.open(anchor=world.client())


def test_heartbeat_if_due_follows_the_store_clock(env, world) -> None:
    s = env.open(anchor=world.client())
    assert not s.heartbeat_if_due(10 * SEC)  # just opened
    assert s.heartbeat_if_due(0)
    assert world.service.statistics().live_leases == 1


def test_unreachable_anchor_on_heartbeat_keeps_the_store_serving(env, world) -> None:
    down = {"on": False}

    def flaky(msg):
        if down["on"]:
            raise AnchorError("network down")
        return world.service.handle(msg)

    s = env.open(anchor=world.client(exchange=flaky))
    down["on"] = True
    with pytest.raises(AnchorError):
        s.heartbeat()
    assert s.failed is None and s.get("tpm", "nv") is None
    down["on"] = False
    s.put("tpm", "nv", b"1")


def test_crash_between_superblock_and_anchor_update_is_accepted(env, world) -> None:
    fail = {"advance": False}

    def flaky(msg):
        if fail["advance"] and msg.get("type") == "op" and msg["request"]["op"] == "advance":
            raise AnchorError("network down")
        return world.service.handle(msg)

    s = env.open(anchor=world.client(exchange=flaky))
    s.put("tpm", "nv", b"1")
    fail["advance"] = True
    with pytest.raises(AnchorError):
        s.put("tpm", "nv", b"2")  # durable on disk, not anchored, not acknowledged
    assert s.failed is not None
    world.now += 31 * SEC
    s2 = env.open(anchor=world.client())
    assert s2.generation == 3 and s2.get("tpm", "nv") == b"2"
    s2.put("tpm", "nv", b"3")  # the anchor caught up: later commits work


def test_anchored_store_needs_its_anchor(env, world) -> None:
    env.open(anchor=world.client()).close()
    with pytest.raises(AnchorRequired):
        env.open()
    other = World(env, world.psp)
    with pytest.raises(AnchorRequired):
        env.open(anchor=other.client())


def test_unanchored_store_enrolls_and_then_requires_the_anchor(env, world) -> None:
    s = env.open()
    s.put("tpm", "nv", b"1")
    s2 = env.open(anchor=world.client())
    assert s2.generation == 3  # one commit sealed the anchor pin
    s2.close()
    with pytest.raises(AnchorRequired):
        env.open()


def test_image_from_before_enrollment_is_a_rollback(env, world) -> None:
    s = env.open()
    s.put("tpm", "nv", b"1")
    before = env.image.snapshot()
    env.open(anchor=world.client()).close()
    env.image.restore(before)
    with pytest.raises(RollbackDetected):
        env.open(anchor=world.client())


def test_anchor_refuses_other_measurements_when_configured(env, fake_psp, tmp_path) -> None:
    w = World(env, fake_psp(), tmp_path, allowed_measurements={b"X" * 48})
    with pytest.raises(AnchorError):
        env.open(anchor=w.client())


@pytest.mark.parametrize("one_store", [False, True])
def test_wiped_disk_is_a_rollback_only_with_one_store_per_measurement(env, fake_psp, tmp_path, one_store) -> None:
    w = World(env, fake_psp(), tmp_path, one_store_per_measurement=one_store)
    s = env.open(anchor=w.client())
    s.put("tpm", "nv", b"1")
    s.close()
    env.image.restore({})  # the host wipes the disk: the SVSM formats a new store (new store id)
    if one_store:
        with pytest.raises(RollbackDetected):
            env.open(anchor=w.client())
    else:
        assert env.open(anchor=w.client()).get("tpm", "nv") is None  # documented gap without the option


def test_pinned_key_mismatch_is_refused(env, world) -> None:
    with pytest.raises(AnchorError):
        env.open(anchor=world.client(anchor_key=bytes(32)))


@pytest.mark.parametrize("attack", ["forge-report", "swap-request", "replay-challenge", "replay-reply",
                                    "forge-reply", "vmpl1"])
def test_host_in_the_middle_is_detected(env, world, attack: str) -> None:
    seen: list = []

    def mitm(msg):
        if msg.get("type") == "op":
            if attack == "forge-report":
                msg = dict(msg, report=msg["report"][:-2] + ("00" if msg["report"][-2:] != "00" else "11"))
            elif attack == "swap-request":
                msg = dict(msg, request=dict(msg["request"], generation=999))
            elif attack == "replay-challenge" and seen:
                msg = dict(msg, request=dict(msg["request"], challenge=seen[0]["request"]["challenge"]))
            seen.append(msg)
        reply = world.service.handle(msg)
        if msg.get("type") == "op":
            if attack == "replay-reply" and len(seen) > 1:
                return world.service.handle({"type": "challenge"}) and seen_replies[0]
            if attack == "forge-reply":
                forged = dict(reply["reply"], status="ok", generation=None)
                return dict(reply, reply=forged, signature="00" * 64)
            seen_replies.append(reply)
        return reply

    seen_replies: list = []
    if attack == "vmpl1":
        world.psp.vmpl = 1
    with pytest.raises(AnchorError):
        s = env.open(anchor=world.client(exchange=mitm))
        s.put("tpm", "nv", b"x")
        s.put("tpm", "nv", b"y")


def test_one_round_trip_per_commit_and_expired_challenges_are_refetched(env, world) -> None:
    sent: list[str] = []

    def counting(msg):
        sent.append(msg["type"])
        return world.service.handle(msg)

    s = env.open(anchor=world.client(exchange=counting))
    sent.clear()
    s.put("tpm", "nv", b"1")
    assert sent == ["op"]  # the challenge came with the previous reply
    world.now += 61 * SEC  # the cached challenge expired (the lease too, but nobody took it)
    sent.clear()
    s.put("tpm", "nv", b"2")
    assert sent == ["op", "challenge", "op"]  # refused once, then a fresh challenge


def test_generation_is_monotonic_at_the_anchor(env, world) -> None:
    c = world.client()
    c.acquire(b"s" * 16)
    c.advance(b"s" * 16, 5)
    with pytest.raises(RollbackDetected):
        c.advance(b"s" * 16, 4)
    c.advance(b"s" * 16, 5)


def test_anchor_state_survives_a_restart(env, world) -> None:
    s = env.open(anchor=world.client())
    s.put("tpm", "nv", b"1")
    old = env.image.snapshot()
    s.put("tpm", "nv", b"2")
    s.close()
    world.restart()
    env.image.restore(old)
    with pytest.raises(RollbackDetected):
        env.open(anchor=world.client())


@pytest.mark.slow
def test_over_tcp(env, world) -> None:
    server = serve_tcp(world.service)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        host, port = server.server_address[:2]
        s = env.open(anchor=world.client(exchange=TcpTransport(host, port)))
        s.put("tpm", "nv", b"over tcp")
        s.close()
        with pytest.raises(AnchorError):
            TcpTransport(host, port)({"type": "x" * 70000})  # over the frame cap: the server hangs up
    finally:
        server.shutdown()
        server.server_close()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "request", "report", "vcek", "op"]), json_values, max_size=5))
def test_fuzz_service_never_raises(msg) -> None:
    svc = AnchorService(Ed25519PrivateKey.generate(), lambda r, v: (_ for _ in ()).throw(ValueError()),
                        clock=itertools.count().__next__, rng=bytes)
    assert svc.handle(msg)["type"] in ("error", "challenge", "reply")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decode_and_parse_request(data: bytes) -> None:
    try:
        obj = decode(data)
        parse_request(obj.get("request"))
    except ProtocolViolation:
        pass


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fuzz_parse_reply(obj) -> None:
    from svsm.modules.persist._anchor_proto import parse_reply

    try:
        parse_reply(obj)
    except ProtocolViolation:
        pass
