"""The relay's endpoint parsing and a loopback connection."""

from __future__ import annotations

import threading

import pytest

from svsm.kernel.migration._transport import accept_one, connect, listen, parse_endpoint
from svsm.sdk import InvalidParameter


@pytest.mark.parametrize("text,want", [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:4000", ("::1", 4000)),
                                        ("169.254.7.1:65535", ("169.254.7.1", 65535))])
def test_parse(text, want) -> None:
    assert parse_endpoint(text) == want


@pytest.mark.parametrize("text", ["nohost", ":80", "h:0", "h:70000", "h:x"])
def test_parse_refuses(text) -> None:
    with pytest.raises(InvalidParameter):
        parse_endpoint(text)


def test_loopback_round_trip(tmp_path) -> None:
    pf = tmp_path / "port"
    srv = listen("127.0.0.1", 0, port_file=pf)
    got = []
    th = threading.Thread(target=lambda: got.append(accept_one(srv, timeout=5).recv(5)))
    th.start()
    with connect("127.0.0.1", int(pf.read_text())) as c:
        c.sendall(b"hello")
        th.join(5)
    srv.close()
    assert got == [b"hello"]
    with pytest.raises(TimeoutError):
        accept_one(listen("127.0.0.1", 0), timeout=0.01)
