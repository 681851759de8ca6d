"""The store and anchor against the simulated PSP: real MSG_KEY_REQ keys, real VCEK-signed reports.

* sealing keys come from MSG_KEY_REQ bound to MEASUREMENT and POLICY: an image moved to a CVM with
  another measurement cannot be unsealed;
* the anchor verifies each report against ARK -> ASK -> VCEK (svsm.sdk.attestation);
* ``svsm anchor serve`` (the CLI entry point) refuses a clone over real TCP.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from svsm.kernel.hw.blockdev import BlockDevice, MemoryImage
from svsm.modules.persist import (AnchorClient, AnchorError, AnchorService, CloneDetected, IntegrityError,
                                  RollbackDetected, TcpTransport, chain_verifier)
from svsm.sdk.attestation import SNP_KEY_REQ, SNP_KEY_RSP, GuestMessageClient, MsgType

pytestmark = pytest.mark.slow

FIELD_POLICY, FIELD_MEASUREMENT = 1 << 0, 1 << 3


class Cvm:
    """One launched guest context: its derived sealing key and its reports."""

    def __init__(self, fw, image: bytes) -> None:
        self.fw = fw
        self.ctx = fw.launch_start()
        fw.launch_update_normal(self.ctx, 0x1000, image.ljust(4096, b"\0"))
        self.measurement = fw.launch_finish(self.ctx)
        self._msg = GuestMessageClient(self.ctx.vmpcks[0], 0)

    def sealing_key(self) -> bytes:
        req = SNP_KEY_REQ(guest_field_select=FIELD_POLICY | FIELD_MEASUREMENT, vmpl=0)
        page = self._msg.request(MsgType.KEY_REQ, bytes(req)[:32])
        rsp = SNP_KEY_RSP.from_buffer_copy(self._msg.response(self.fw.guest_request(self.ctx, page))[:64])
        assert rsp.status == 0
        return bytes(rsp.derived_key)

    def attest(self, report_data: bytes, with_vcek: bool = True) -> tuple[bytes, bytes]:
        _, vcek = self.fw.chip.vcek()
        return self.fw.build_report(self.ctx, report_data, 0), vcek.public_bytes(Encoding.DER) if with_vcek else b""


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    from svsm.kernel.hw.psp import Chip

    return Chip.load_or_create(tmp_path_factory.mktemp("chip"))


@pytest.fixture
def fw(chip):
    from svsm.kernel.hw.psp import SnpFirmware

    return SnpFirmware(chip)


def test_image_moved_to_another_measurement_cannot_unseal(env, fw) -> None:
    a, b, a_again = Cvm(fw, b"svsm A"), Cvm(fw, b"svsm B"), Cvm(fw, b"svsm A")
    s = env.open(key=a.sealing_key())
    s.put("tpm", "seed", b"secret")
    with pytest.raises(IntegrityError):
        env.open(key=b.sealing_key())
    assert env.open(key=a_again.sealing_key()).get("tpm", "seed") == b"secret"  # same measurement: a reboot


def test_anchor_verifies_real_reports(env, fw, chip) -> None:
    cvm = Cvm(fw, b"svsm A")
    ark, ask, _ = chip.chain_pem()
    now = [0]
    service = AnchorService(Ed25519PrivateKey.generate(), chain_verifier(ark, ask), clock=lambda: now[0],
                            rng=os.urandom, allowed_measurements={cvm.measurement})
    client = lambda c: AnchorClient(service.handle, c.attest, rng=os.urandom)  # noqa: E731
    s = env.open(key=cvm.sealing_key(), anchor=client(cvm))
    s.put("tpm", "nv", b"1")
    old = env.image.snapshot()
    s.put("tpm", "nv", b"2")
    s.close()
    env.image.restore(old)
    with pytest.raises(RollbackDetected):
        env.open(key=cvm.sealing_key(), anchor=client(cvm))
    other = Cvm(fw, b"svsm B")  # not in the allow-list: no anchor for it
    with pytest.raises(AnchorError):
        client(other).acquire(b"s" * 16)
    assert service.statistics().refused >= 1


def test_cli_anchor_refuses_a_clone_over_tcp(tmp_path, fw, chip) -> None:
    chip_dir = chip.state_dir
    svsm = os.path.join(os.path.dirname(sys.executable), "svsm")
    proc = subprocess.Popen([svsm, "anchor", "serve", "--state", str(tmp_path / "anchor"), "--listen",
                             "127.0.0.1:0", "--chip-dir", str(chip_dir)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line[:3] == ["anchor", "listening", "on"], line
        host, port = line[3].rsplit(":", 1)
        key = bytes.fromhex(line[5])
        cvm = Cvm(fw, b"svsm A")
        transport = TcpTransport(host, int(port))
        image = MemoryImage(128)
        clock = iter(range(10**9)).__next__

        def open_store(img):
            client = AnchorClient(transport, lambda rd: cvm.attest(rd, with_vcek=False), rng=os.urandom,
                                  anchor_key=key)
            from svsm.modules.persist import Store

            return Store.open(BlockDevice(img), cvm.sealing_key(), clock=clock, rng=os.urandom, anchor=client)

        first = open_store(image)
        first.put("tpm", "nv", b"1")
        clone = MemoryImage(128)
        clone.restore(image.snapshot())
        with pytest.raises(CloneDetected):
            open_store(clone)
        first.put("tpm", "nv", b"2")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
