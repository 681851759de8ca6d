"""Two hosts on one machine: the destination in one network namespace, the source in another,
joined by a veth pair with link-local addresses.  Needs root; the namespaces are always deleted.

Network rule: traffic only between 169.254.x.y addresses inside namespaces this test creates.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from svsm.sdk.testing import require_root, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.root]

_CLI = "import sys; from svsm.kernel.cli import main; sys.exit(main(sys.argv[1:]))"
DST_ADDR, SRC_ADDR = "169.254.77.1", "169.254.77.2"


def _ip(ip: str, *args: str) -> None:
    subprocess.run([ip, *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def two_hosts(ip: str) -> Iterator[tuple[str, str]]:
    tag = f"{os.getpid() % 100000}"
    a, b = f"svsmmig-d{tag}", f"svsmmig-s{tag}"
    veth_a, veth_b = f"vmd{tag}", f"vms{tag}"
    try:
        _ip(ip, "netns", "add", a)
        _ip(ip, "netns", "add", b)
        _ip(ip, "link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        _ip(ip, "link", "set", veth_a, "netns", a)
        _ip(ip, "link", "set", veth_b, "netns", b)
        for ns, dev, addr in ((a, veth_a, DST_ADDR), (b, veth_b, SRC_ADDR)):
            _ip(ip, "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip(ip, "-n", ns, "link", "set", dev, "up")
            _ip(ip, "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run([ip, "netns", "delete", ns], capture_output=True, timeout=30)  # removes the veth too
        subprocess.run([ip, "link", "delete", veth_a], capture_output=True, timeout=30)


def test_migration_between_two_network_namespaces(tmp_path: pathlib.Path) -> None:
    require_root("network namespaces")
    ip = require_tool("ip", "apt-get install iproute2")
    port_file = tmp_path / "port"
    with two_hosts(ip) as (dst_ns, src_ns):
        dst = subprocess.Popen(
            [ip, "netns", "exec", dst_ns, sys.executable, "-c", _CLI, "run", "--incoming", "0", "--listen", DST_ADDR,
             "--port-file", str(port_file), "--memory", "24M", "--vcpus", "1", "--json", "--after-steps", "10",
             "--accept-timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not port_file.exists():
                assert dst.poll() is None, dst.stderr.read() if dst.stderr else ""
                assert time.monotonic() < deadline, "destination never listened"
                time.sleep(0.1)
            port = int(port_file.read_text())
            src = subprocess.run(
                [ip, "netns", "exec", src_ns, sys.executable, "-c", _CLI, "migrate", "--to", f"{DST_ADDR}:{port}",
                 "--memory", "24M", "--vcpus", "1", "--json", "--warmup", "0.3"],
                capture_output=True, text=True, timeout=240,
            )  # fmt: skip
            assert src.returncode == 0, src.stderr[-3000:]
            out, err = dst.communicate(timeout=240)
        finally:
            if dst.poll() is None:
                dst.kill()
                dst.wait()
        assert dst.returncode == 0, err[-3000:]
        s, d = json.loads(src.stdout), json.loads(out)
        assert s["migration"]["result"] == d["migration"]["result"] == "committed"
        assert s["migration"]["fingerprint"] == d["migration"]["fingerprint"]
        assert s["source_refuses_resume"] is True
        wk = d["workload"]
        assert wk["resumed_at_step"] == s["workload_step"] and wk["pcr_matches"] and wk["pcr_matches_after"]
    assert dst_ns not in subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout
