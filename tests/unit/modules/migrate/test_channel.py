"""The migration channel: attested handshake, per-direction keys, and tamper/replay refusal.

Reports come from the real simulated PSP (signed by a generated VCEK chain), so the
verifier runs exactly the checks production does.
"""

from __future__ import annotations

import os

import pytest

from svsm.kernel.hw.psp import Chip, SnpFirmware
from svsm.modules.migrate._channel import (
    Channel,
    ChannelError,
    ChannelState,
    Evidence,
    HandshakeComplete,
    Record,
    Role,
)
from svsm.modules.migrate._policy import MeasurementPolicy, make_verifier


class Cvm:
    """A launched guest context on a simulated chip that can produce evidence."""

    def __init__(self, fw: SnpFirmware, image: bytes, policy: int = 0x30000) -> None:
        self.fw = fw
        self.ctx = fw.launch_start(policy)
        fw.launch_update_normal(self.ctx, 0x1000, image)
        self.measurement = fw.launch_finish(self.ctx)
        self.ark, self.ask, self.vcek = fw.chip.chain_pem()

    def attester(self, report_data: bytes) -> Evidence:
        return Evidence(self.fw.build_report(self.ctx, report_data, 0), self.ark, self.ask, self.vcek)


@pytest.fixture(scope="module")
def other_fw(tmp_path_factory: pytest.TempPathFactory) -> SnpFirmware:
    return SnpFirmware(Chip.load_or_create(tmp_path_factory.mktemp("chip2")))


def _pair(src: Cvm, dst: Cvm, src_policy=None, dst_policy=None) -> tuple[Channel, Channel]:
    s = Channel(Role.SOURCE, src.attester, make_verifier(src.ark, src_policy or MeasurementPolicy.same_as(src.measurement)), os.urandom)
    d = Channel(Role.DESTINATION, dst.attester, make_verifier(dst.ark, dst_policy or MeasurementPolicy.same_as(dst.measurement)), os.urandom)
    return s, d


def _handshake(s: Channel, d: Channel) -> tuple[HandshakeComplete, HandshakeComplete]:
    d.receive_data(s.initiate())
    s.receive_data(d.outgoing())
    d.receive_data(s.outgoing())
    d_done = d.next_event()
    s.receive_data(d.outgoing())
    s_done = s.next_event()
    assert isinstance(s_done, HandshakeComplete) and isinstance(d_done, HandshakeComplete)
    return s_done, d_done


def test_handshake_binds_both_reports_and_opens_both_directions(fw: SnpFirmware) -> None:
    src, dst = Cvm(fw, b"svsm" * 1024), Cvm(fw, b"svsm" * 1024)
    s, d = _pair(src, dst)
    s_done, d_done = _handshake(s, d)
    assert s_done.transcript_hash == d_done.transcript_hash
    assert s_done.peer_report.measurement == dst.measurement
    assert d_done.peer_report.measurement == src.measurement
    assert s.state is d.state is ChannelState.OPEN

    d.receive_data(s.send(1, b"page batch"))
    assert d.next_event() == Record(1, b"page batch")
    s.receive_data(d.send(2, b"ack"))
    assert s.next_event() == Record(2, b"ack")
    st_s, st_d = s.statistics(), d.statistics()
    assert st_s.records_sent == 1 and st_d.records_received == 1 and st_d.records_sent == 2  # Finished + ack
    assert st_s.bytes_sent == st_d.bytes_received and st_s.state == "open"


def test_destination_with_another_measurement_is_refused(fw: SnpFirmware) -> None:
    src, dst = Cvm(fw, b"A" * 4096), Cvm(fw, b"B" * 4096)
    s, d = _pair(src, dst, dst_policy=MeasurementPolicy.same_as(src.measurement))
    d.receive_data(s.initiate())
    with pytest.raises(ChannelError):
        s.receive_data(d.outgoing())
    assert s.state is ChannelState.ABORTED
    with pytest.raises(ChannelError):
        s.send(1, b"secret pages")


def test_allow_list_admits_an_upgrade(fw: SnpFirmware) -> None:
    src, dst = Cvm(fw, b"old!" * 1024), Cvm(fw, b"new!" * 1024)
    both = MeasurementPolicy.same_as(src.measurement, dst.measurement)
    s, d = _pair(src, dst, src_policy=both, dst_policy=both)
    _handshake(s, d)


def test_peer_under_another_root_key_is_refused(fw: SnpFirmware, other_fw: SnpFirmware) -> None:
    src, dst = Cvm(fw, b"X" * 4096), Cvm(other_fw, b"X" * 4096)
    s, d = _pair(src, dst)
    d.receive_data(s.initiate())
    with pytest.raises(ChannelError):
        s.receive_data(d.outgoing())


def test_debug_policy_peer_is_refused(fw: SnpFirmware) -> None:
    src, dst = Cvm(fw, b"Y" * 4096), Cvm(fw, b"Y" * 4096, policy=0x30000 | (1 << 19))
    s, d = _pair(src, dst)
    d.receive_data(s.initiate())
    with pytest.raises(ChannelError):
        s.receive_data(d.outgoing())


def test_report_spliced_from_another_session_is_refused(fw: SnpFirmware) -> None:
    """A MITM replaying a genuine report from an earlier handshake cannot bind new keys."""
    src, dst = Cvm(fw, b"Z" * 4096), Cvm(fw, b"Z" * 4096)
    s1, d1 = _pair(src, dst)
    d1.receive_data(s1.initiate())
    old_reply = d1.outgoing()
    s2, d2 = _pair(src, dst)
    s2.initiate()
    with pytest.raises(ChannelError):
        s2.receive_data(old_reply)


@pytest.fixture
def open_pair(fw: SnpFirmware) -> tuple[Channel, Channel]:
    cvm = Cvm(fw, b"Q" * 4096)
    s, d = _pair(cvm, cvm)
    _handshake(s, d)
    return s, d


def test_replayed_record_aborts(open_pair: tuple[Channel, Channel]) -> None:
    s, d = open_pair
    rec = s.send(1, b"one")
    d.receive_data(rec)
    with pytest.raises(ChannelError):
        d.receive_data(rec)
    assert d.state is ChannelState.ABORTED


def test_reordered_records_abort(open_pair: tuple[Channel, Channel]) -> None:
    s, d = open_pair
    first, second = s.send(1, b"one"), s.send(1, b"two")
    with pytest.raises(ChannelError):
        d.receive_data(second + first)


def test_dropped_record_aborts(open_pair: tuple[Channel, Channel]) -> None:
    s, d = open_pair
    s.send(1, b"lost")
    with pytest.raises(ChannelError):
        d.receive_data(s.send(1, b"next"))


@pytest.mark.parametrize("offset", [4, 5, 6, 13, 14, -1, -17])
def test_any_flipped_byte_aborts(open_pair: tuple[Channel, Channel], offset: int) -> None:
    s, d = open_pair
    rec = bytearray(s.send(3, b"sixteen byte msg"))
    rec[offset] ^= 0x01
    with pytest.raises(ChannelError):
        d.receive_data(bytes(rec))


def test_oversized_length_prefix_is_refused_before_buffering(open_pair: tuple[Channel, Channel]) -> None:
    _, d = open_pair
    with pytest.raises(ChannelError):
        d.receive_data(b"\xff\xff\xff\xff")


def test_records_split_across_reads_are_reassembled(open_pair: tuple[Channel, Channel]) -> None:
    s, d = open_pair
    data = s.send(7, os.urandom(5000)) + s.send(8, b"")
    for i in range(0, len(data), 333):
        d.receive_data(data[i : i + 333])
    assert [e.type for e in iter(d.next_event, None)] == [7, 8]


def test_direction_keys_differ(open_pair: tuple[Channel, Channel]) -> None:
    """A record sent by the source cannot be reflected back to it as if from the destination."""
    s, _ = open_pair
    with pytest.raises(ChannelError):
        s.receive_data(s.send(1, b"reflected"))


def test_both_ends_derive_the_same_digest_key_and_no_one_before_the_handshake(fw: SnpFirmware) -> None:
    src, dst = Cvm(fw, b"svsm" * 1024), Cvm(fw, b"svsm" * 1024)
    s, d = _pair(src, dst)
    with pytest.raises(ChannelError):
        s.digest_key
    _handshake(s, d)
    assert s.digest_key == d.digest_key and len(s.digest_key) == 32
    s2, d2 = _pair(src, dst)
    _handshake(s2, d2)
    assert s2.digest_key != s.digest_key  # fresh per migration (ECDH)


def test_peer_on_older_firmware_is_refused_by_the_tcb_floor(fw: SnpFirmware) -> None:
    """SECREVIEW 14: a genuinely signed destination on older, since-fixed firmware is not a safe home."""
    import dataclasses

    from svsm.sdk.attestation import decode_tcb, encode_tcb

    cur = decode_tcb(fw.chip.raw_tcb)
    older = encode_tcb(cur._replace(snp=cur.snp - 1))
    old_fw = SnpFirmware(fw.chip, reported_tcb=older)
    src, dst = Cvm(fw, b"T" * 4096), Cvm(old_fw, b"T" * 4096)
    dst.ark, dst.ask, dst.vcek = old_fw.chip.chain_pem(older)
    floor = dataclasses.replace(MeasurementPolicy.same_as(src.measurement), min_tcb=cur)
    s, d = _pair(src, dst, src_policy=floor)
    d.receive_data(s.initiate())
    with pytest.raises(ChannelError):
        s.receive_data(d.outgoing())
    # without the floor the same, genuinely signed peer would have been accepted
    s, d = _pair(src, dst)
    _handshake(s, d)
