"""Socket drivers and clients over loopback (threads only, no processes)."""

from __future__ import annotations

import socket
import struct

import pytest

from svsm.sdk.tpm import MssimClient, MssimServer, SwtpmClient, SwtpmServer, TpmPlatform, TransportError, free_port_pair
from svsm.sdk.tpm._client import recv_exact

GETRANDOM = bytes.fromhex("80010000000c0000017b0008")


class Echo:
    def __init__(self) -> None:
        self.seen: list[tuple[bytes, int]] = []

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        self.seen.append((command, locality))
        return struct.pack(">HII", 0x8001, 14, 0) + command[6:10]


def test_free_port_pair_gives_two_bindable_ports() -> None:
    p = free_port_pair()
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", p))
        b.bind(("127.0.0.1", p + 1))


@pytest.mark.parametrize("low_latency", [True, False])
def test_mssim_round_trip_and_stop(low_latency: bool) -> None:
    dev = Echo()
    srv = MssimServer(dev, low_latency=low_latency).start()
    try:
        with MssimClient(port=srv.port) as c:
            assert c.execute(GETRANDOM, 1)[6:] == bytes.fromhex("00000000" "0000017b")
            c.power_off()
            assert c.execute(GETRANDOM) == b""  # no power: rspSize 0
            c.power_on()
            assert c.execute(GETRANDOM)[:2] == b"\x80\x01"
        assert dev.seen == [(GETRANDOM, 1), (GETRANDOM, 0)]
        # TPM_STOP on the platform port stops the server.
        with socket.create_connection(("127.0.0.1", srv.port + 1)) as s:
            s.sendall(struct.pack(">I", 21))
        assert srv.wait_stopped(5)
    finally:
        srv.stop()
    st = srv.statistics()
    assert st.connections == 3 and st.transport_errors == 0


def test_mssim_oversize_command_drops_client_and_counts() -> None:
    with MssimServer(Echo()) as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(struct.pack(">IBI", 8, 0, 100000))
            assert s.recv(10) == b""  # dropped, no reply
        with MssimClient(port=srv.port) as c:  # the server keeps serving others
            assert c.execute(GETRANDOM)[:2] == b"\x80\x01"
    assert srv.statistics().transport_errors == 1


def test_swtpm_many_short_connections_and_control() -> None:
    dev = Echo()
    with SwtpmServer(TpmPlatform(dev)) as srv:
        for _ in range(5):  # tcti-swtpm: one connection per command
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(GETRANDOM)
                assert recv_exact(s, 14)[6:10] == b"\0\0\0\0"
        with SwtpmClient(port=srv.port) as c:
            c.set_locality(2)
            assert c.execute(GETRANDOM, 2)[:2] == b"\x80\x01"
            assert c.capabilities() & (1 << 15)
            assert c.control(0x77) == (9, b"")  # unknown control command: TPM_FAIL
            with pytest.raises(TransportError):
                c._ok(0x77)
            c.shutdown()
        assert srv.wait_stopped(5)
    # CMD_SHUTDOWN first sends TPM2_Shutdown(CLEAR) itself, like swtpm.
    assert dev.seen[-2:] == [(GETRANDOM, 2), (bytes.fromhex("80010000000c000001450000"), 2)]
    assert srv.statistics().connections >= 9


def test_free_port_pair_avoids_the_ephemeral_range_and_is_injectable() -> None:
    import random

    from svsm.sdk.tpm._server import _ephemeral_range

    lo, hi = _ephemeral_range()
    a = free_port_pair(rng=random.Random(7))
    assert not lo <= a <= hi and not lo <= a + 1 <= hi


def test_unix_sockets_serve_both_channels_and_are_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "tpm")
    dev = Echo()
    with MssimServer(dev, path=path) as srv:
        with socket.socket(socket.AF_UNIX) as plat, socket.socket(socket.AF_UNIX) as cmd:
            plat.connect(path + ".ctrl")
            plat.sendall(struct.pack(">I", 1))  # POWER_ON
            assert recv_exact(plat, 4) == b"\0\0\0\0"
            cmd.connect(path)
            cmd.sendall(struct.pack(">IBI", 8, 0, len(GETRANDOM)) + GETRANDOM)
            assert recv_exact(cmd, 4 + 14 + 4)[4:6] == b"\x80\x01"
        assert srv.statistics().transport_errors == 0
    assert not (tmp_path / "tpm").exists() and not (tmp_path / "tpm.ctrl").exists()
    assert dev.seen == [(GETRANDOM, 0)]


def test_a_device_bug_drops_one_client_not_the_server() -> None:
    class Buggy(Echo):
        def execute(self, command: bytes, locality: int = 0) -> bytes:
            if command[6:10] == b"\0\0\x01\x44":  # Startup: crash
                raise ZeroDivisionError("bug")
            return super().execute(command, locality)

    with MssimServer(Buggy()) as srv:
        with MssimClient(port=srv.port) as c:
            with pytest.raises(TransportError):
                c.execute(bytes.fromhex("80010000000c000001440000"))
        with MssimClient(port=srv.port) as c:
            assert c.execute(GETRANDOM)[:2] == b"\x80\x01"
    assert srv.statistics().internal_errors == 1
