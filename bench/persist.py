"""Benchmark of the persistence store, each figure next to a baseline measured in the same run.

* commit latency of one 4 KiB record (seal, COW index path, 2 fsyncs) vs a raw ``pwrite`` + ``fsync``
  of the same 4 KiB on the same disk;
* the same commit with the freshness anchor over loopback TCP (attested request, signed reply);
* bulk put throughput (batches of 4 KiB records) vs raw sequential writes + one fsync;
* open (recovery) time and a full scrub as the store grows from 1 MiB to 256 MiB, vs reading the
  whole image sequentially.

Usage: ``python bench/persist.py [--max-mib 256] [--dir DIR]``.
"""

from __future__ import annotations

import os
import sys

# bench/platform.py would shadow the standard library's ``platform`` (imported by uuid/msgspec).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import hmac  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from svsm.kernel.hw.blockdev import BLOCK_SIZE, BlockDevice, FileImage
from svsm.modules.persist import AnchorClient, AnchorService, Put, Quota, Store, TcpTransport
from svsm.modules.persist._anchor_service import serve_tcp

KEY = bytes(range(32))
QUOTA = Quota(1 << 24, 1 << 40)
#: A value that seals into exactly one block (4096 - nonce - tag).
VALUE_1BLK = BLOCK_SIZE - 28


def _open(path: str, blocks: int | None = None, anchor=None) -> tuple[Store, FileImage]:
    image = FileImage(path, blocks)
    store = Store.open(BlockDevice(image), KEY, clock=time.monotonic_ns, rng=os.urandom, anchor=anchor,
                       default_quota=QUOTA)
    return store, image


def _pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]


def _hmac_attestation():
    """A stand-in for SNP reports (HMAC), so the figure shows the protocol, not ECDSA P-384."""
    secret = os.urandom(32)

    def attest(report_data: bytes) -> tuple[bytes, bytes]:
        body = b"M" * 48 + report_data
        return body + hmac.new(secret, body, "sha256").digest(), b""

    def verify(report: bytes, vcek: bytes):
        body = report[:-32]
        if not hmac.compare_digest(hmac.new(secret, body, "sha256").digest(), report[-32:]):
            raise ValueError("bad report")
        return SimpleNamespace(measurement=body[:48], report_data=body[48:], vmpl=0, policy=0x30000)

    return attest, verify


def commit_latency(d: str, n: int) -> None:
    """Raw write+fsync, a commit, and an anchored commit, interleaved so disk noise hits all three."""
    attest, verify = _hmac_attestation()
    service = AnchorService(Ed25519PrivateKey.generate(), verify, clock=time.monotonic_ns, rng=os.urandom)
    server = serve_tcp(service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    plain, plain_img = _open(os.path.join(d, "lat.img"), 4096)
    client = AnchorClient(TcpTransport(*server.server_address[:2]), attest, rng=os.urandom)
    anchored, anch_img = _open(os.path.join(d, "anch.img"), 4096, anchor=client)
    fd = os.open(os.path.join(d, "raw.bin"), os.O_RDWR | os.O_CREAT, 0o600)
    value = os.urandom(BLOCK_SIZE)
    raw, ours, anch = [], [], []
    try:
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, value, (i % 64) * BLOCK_SIZE)
            os.fsync(fd)
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            plain.put("bench", f"k{i % 64}", value)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            anchored.put("bench", f"k{i % 64}", value)
            anch.append(time.perf_counter() - t)
        anchored.close()
    finally:
        os.close(fd)
        plain_img.close()
        anch_img.close()
        server.shutdown()
        server.server_close()
    m_raw, m_ours, m_anch = (statistics.median(x) for x in (raw, ours, anch))
    print(f"commit 4 KiB record: median {m_ours * 1e3:.2f} ms (p99 {_pct(ours, .99) * 1e3:.2f}) | raw write+fsync "
          f"median {m_raw * 1e3:.2f} ms (p99 {_pct(raw, .99) * 1e3:.2f}) | ratio {m_ours / m_raw:.2f}x")
    print(f"commit 4 KiB record + anchor advance (loopback TCP, HMAC stand-in for the SNP report): median "
          f"{m_anch * 1e3:.2f} ms | ratio to raw write+fsync {m_anch / m_raw:.2f}x, to plain commit "
          f"{m_anch / m_ours:.2f}x")


def psp_anchored_latency(d: str, n: int) -> None:
    """Anchored commits with real SNP reports (simulated PSP: ECDSA P-384 by the VCEK, verified
    against ARK -> ASK -> VCEK by the anchor), interleaved with plain commits."""
    from svsm.kernel.hw.psp import Chip, SnpFirmware
    from svsm.modules.persist import chain_verifier

    from cryptography.hazmat.primitives.serialization import Encoding

    chip = Chip.load_or_create(os.path.join(d, "chip"))  # RSA-4096 ARK/ASK: a few seconds, once
    fw = SnpFirmware(chip)
    ctx = fw.launch_start()
    fw.launch_update_normal(ctx, 0x1000, b"bench svsm".ljust(BLOCK_SIZE, b"\0"))
    fw.launch_finish(ctx)
    vcek = chip.vcek()[1].public_bytes(Encoding.DER)
    ark, ask, _ = chip.chain_pem()
    service = AnchorService(Ed25519PrivateKey.generate(), chain_verifier(ark, ask), clock=time.monotonic_ns,
                            rng=os.urandom)
    server = serve_tcp(service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = AnchorClient(TcpTransport(*server.server_address[:2]),
                          lambda rd: (fw.build_report(ctx, rd, 0), vcek), rng=os.urandom)
    plain, plain_img = _open(os.path.join(d, "psp-plain.img"), 4096)
    anchored, anch_img = _open(os.path.join(d, "psp-anch.img"), 4096, anchor=client)
    value = os.urandom(BLOCK_SIZE)
    ours, anch = [], []
    try:
        for i in range(n):
            t = time.perf_counter()
            plain.put("bench", f"k{i % 64}", value)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            anchored.put("bench", f"k{i % 64}", value)
            anch.append(time.perf_counter() - t)
        anchored.close()
    finally:
        plain_img.close()
        anch_img.close()
        server.shutdown()
        server.server_close()
    m_ours, m_anch = statistics.median(ours), statistics.median(anch)
    print(f"commit 4 KiB record + anchor advance with a real SNP report (VCEK ECDSA P-384, chain verified): "
          f"median {m_anch * 1e3:.2f} ms | plain commit {m_ours * 1e3:.2f} ms | ratio {m_anch / m_ours:.2f}x")


def bulk_throughput(d: str, mib: int, batch: int) -> None:
    """Batches of ``batch`` 4 KiB records per commit vs the same bytes written raw + one fsync per batch.

    Interleaved batch by batch, so both see the same disk (and the same neighbours' load).
    """
    records = mib * 256
    store, image = _open(os.path.join(d, "bulk.img"), records * 2 + 4096)
    fd = os.open(os.path.join(d, "bulk.raw"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    values = [os.urandom(BLOCK_SIZE) for _ in range(16)]
    ours = raw = 0.0
    for i in range(0, records, batch):
        span = range(i, min(records, i + batch))
        t = time.perf_counter()
        store.commit([Put("bench", f"r{j:08d}", values[j % 16]) for j in span])
        ours += time.perf_counter() - t
        t = time.perf_counter()
        for j in span:
            os.pwrite(fd, values[j % 16], j * BLOCK_SIZE)
        os.fsync(fd)
        raw += time.perf_counter() - t
    image.close()
    os.close(fd)
    print(f"bulk put {mib} MiB of 4 KiB records, {batch}/commit: {mib / ours:.1f} MiB/s | raw writes + one fsync "
          f"per batch {mib / raw:.1f} MiB/s | ratio {ours / raw:.2f}x slower")


def open_scaling(d: str, max_mib: int) -> None:
    path = os.path.join(d, "grow.img")
    sizes = [s for s in (1, 4, 16, 64, 256, 1024) if s <= max_mib]
    records_total = max(sizes) * 256
    store, image = _open(path, records_total + records_total // 8 + 1024)
    value = os.urandom(VALUE_1BLK)
    have = 0
    for mib in sizes:
        want = mib * 256
        while have < want:
            n = min(512, want - have)
            store.commit([Put("bench", f"r{j:08d}", value) for j in range(have, have + n)])
            have += n
        store.close()
        image.close()
        t_open = t_scrub = t_raw = float("inf")
        for _ in range(3):  # best of three, interleaved: the disk and CPUs are shared
            t = time.perf_counter()
            s2, image = _open(path)
            t_open = min(t_open, time.perf_counter() - t)
            t = time.perf_counter()
            assert s2.scrub() == have
            t_scrub = min(t_scrub, time.perf_counter() - t)
            hw = s2.statistics().blocks_used
            t = time.perf_counter()
            with open(path, "rb") as f:  # the blocks the store uses, read sequentially
                left = hw * BLOCK_SIZE
                while left > 0 and f.read(min(left, 1 << 20)):
                    left -= 1 << 20
            t_raw = min(t_raw, time.perf_counter() - t)
            s2.close()
            image.close()
        s2, image = _open(path)
        print(f"store {mib:4d} MiB ({have} records, {hw} blocks, index depth {s2.statistics().index_depth}): "
              f"open {t_open * 1e3:8.1f} ms, scrub {t_scrub * 1e3:8.1f} ms | raw read of the used blocks "
              f"{t_raw * 1e3:7.1f} ms | open/raw {t_open / t_raw:.2f}x, scrub/raw {t_scrub / t_raw:.2f}x")
        store = s2
    image.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-mib", type=int, default=256, help="largest store for the open/recovery series")
    ap.add_argument("--bulk-mib", type=int, default=32)
    ap.add_argument("--commits", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="records per commit in the bulk test")
    ap.add_argument("--dir", help="directory on the disk to measure (default: a temp dir)")
    ap.add_argument("--no-psp", action="store_true", help="skip the anchored commit with real SNP reports")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the store warns on every open without an anchor
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        commit_latency(d, args.commits)
        if not args.no_psp:
            psp_anchored_latency(d, max(10, args.commits // 4))
        bulk_throughput(d, args.bulk_mib, args.batch)
        open_scaling(d, args.max_mib)


if __name__ == "__main__":
    main()
