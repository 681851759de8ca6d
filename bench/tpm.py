"""vTPM benchmark: the same tpm2-pytss workload against swtpm and against our vTPM, in one run.

Targets (each its own process, so the client's GIL never slows a server):

* ``swtpm``   -- ``swtpm socket --tpm2`` started here on free ports with a temp state dir;
* ``direct``  -- our engine served directly (``svsm tpm serve --direct`` code path);
* ``svsm``    -- the full path (TCP -> guest driver -> SVSM_VTPM_CMD -> kernel -> module), if built.

All are driven through the swtpm TCTI (one TCP connection per command on both sides), so the
transport cost is the same; the ratio column is ``ours / swtpm`` in ops/s (> 1 = faster).
A second table shows the delayed-ACK effect: GetRandom latency over the mssim TCTI with our
server's low-latency replies (TCP_NODELAY + one write + TCP_QUICKACK) and without them.

Run: ``python bench/tpm.py [--seconds S] [--ops a,b] [--profile FILE]``.
"""

from __future__ import annotations

import os
import sys

# bench/ holds platform.py (another bench), which would shadow the stdlib module of that name
# once `python bench/tpm.py` puts this directory first on sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import contextlib
import cProfile
import hashlib
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from svsm.sdk.tpm import MssimServer, SwtpmClient, SwtpmServer, free_port_pair

# -- servers --------------------------------------------------------------------------------------


def _serve_child(transport: str, port: int, low_latency: bool, direct: bool, profile: str) -> None:
    """Child process: serve our vTPM until SIGTERM (optionally under cProfile)."""
    from svsm.kernel.cli.tpm import open_device

    device, owner = open_device(direct=direct, state=None)
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        device = _Profiled(device, prof)
    cls = MssimServer if transport == "mssim" else SwtpmServer
    server = cls(device, port=port, low_latency=low_latency).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.stop()
    if prof is not None:
        prof.dump_stats(profile)
    close = getattr(owner, "close", None)
    if close is not None:
        close()


class _Profiled:
    """Runs each command under one cProfile (commands are serialised by the platform lock)."""

    def __init__(self, device: Any, prof: cProfile.Profile) -> None:
        self.device, self.prof = device, prof

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        return self.prof.runcall(self.device.execute, command, locality)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.device, name)


@contextlib.contextmanager
def ours(transport: str, *, low_latency: bool = True, direct: bool = True, profile: str = "") -> Iterator[int]:
    """Run our server in a child process; yield its port."""
    port = free_port_pair()
    if direct:
        cmd = [sys.executable, __file__, "--serve", transport, str(port), str(int(low_latency)), "1", profile]
    else:
        # The full path through the real CLI (sandboxed module processes re-import __main__).
        cmd = [sys.executable, "-m", "svsm.kernel.cli.tpm", "serve", "--transport", transport, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != b"ready" and not line.startswith(b"svsm tpm serve:"):
            raise RuntimeError(f"server child failed to start ({line!r})")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@contextlib.contextmanager
def swtpm() -> Iterator[int]:
    """Start ``swtpm socket --tpm2`` on free ports with a temporary state dir; yield the data port."""
    with tempfile.TemporaryDirectory() as state:
        port = free_port_pair()
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--flags", "not-need-init",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1", "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"],
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    SwtpmClient(port=port).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield port
        finally:
            with contextlib.suppress(OSError):
                SwtpmClient(port=port).shutdown()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- workload -------------------------------------------------------------------------------------


class Workload:
    """One ESAPI context; each operation loads the objects it needs and flushes them afterwards.

    Phases keep at most two objects loaded, because swtpm (like the reference) has only three
    transient object slots (TPM_PT_HR_TRANSIENT_MIN = 3) and there is no resource manager.
    """

    def __init__(self, tcti: str, conf: str) -> None:
        import tpm2_pytss as t

        self.t = t
        self.esys = t.ESAPI(t.TCTILdr(tcti, conf))
        with contextlib.suppress(t.TSS2_Exception):
            self.esys.startup(t.TPM2_SU.CLEAR)
        self.digest = t.TPM2B_DIGEST(hashlib.sha256(b"bench").digest())
        self.ticket = t.TPMT_TK_HASHCHECK(tag=t.TPM2_ST.HASHCHECK, hierarchy=t.TPM2_RH.NULL)
        self.values = t.TPML_DIGEST_VALUES([t.TPMT_HA(hashAlg=t.TPM2_ALG.SHA256, digest=t.TPMU_HA(sha256=hashlib.sha256(b"bench").digest()))])
        self.selection = t.TPML_PCR_SELECTION.parse("sha256:16")
        self.kib = t.TPM2B_MAX_BUFFER(b"k" * 1024)

    def _primary(self, alg: str, attrs: str) -> Any:
        t = self.t
        tpl = t.TPM2B_PUBLIC.parse(alg, objectAttributes=f"fixedtpm|fixedparent|sensitivedataorigin|userwithauth|{attrs}")
        handle, *_ = self.esys.create_primary(t.TPM2B_SENSITIVE_CREATE(), tpl)
        return handle

    def _scheme(self, alg: Any) -> Any:
        s = self.t.TPMT_SIG_SCHEME(scheme=alg)
        s.details.any.hashAlg = self.t.TPM2_ALG.SHA256
        return s

    @contextlib.contextmanager
    def _loaded(self, alg: str, attrs: str) -> Iterator[Any]:
        h = self._primary(alg, attrs)
        try:
            yield h
        finally:
            self.esys.flush_context(h)

    @contextlib.contextmanager
    def _nv_index(self) -> Iterator[Any]:
        t = self.t
        attrs = t.TPMA_NV.OWNERWRITE | t.TPMA_NV.OWNERREAD | t.TPMA_NV.AUTHREAD | t.TPMA_NV.AUTHWRITE
        public = t.TPM2B_NV_PUBLIC(nvPublic=t.TPMS_NV_PUBLIC(nvIndex=0x01500020, nameAlg=t.TPM2_ALG.SHA256, attributes=attrs, dataSize=32))
        nv = self.esys.nv_define_space(t.TPM2B_AUTH(), public)
        try:
            yield nv
        finally:
            self.esys.nv_undefine_space(nv)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        t, e = self.t, self.esys
        sym = t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.AES, keyBits=t.TPMU_SYM_KEY_BITS(aes=128), mode=t.TPMU_SYM_MODE(aes=t.TPM2_ALG.CFB))
        with self._loaded("ecc256:null:aes128cfb", "restricted|decrypt") as salt_key:
            session = e.start_auth_session(salt_key, t.ESYS_TR.NONE, t.TPM2_SE.HMAC, sym, t.TPM2_ALG.SHA256)
        e.trsess_set_attributes(session, t.TPMA_SESSION.CONTINUESESSION | t.TPMA_SESSION.ENCRYPT | t.TPMA_SESSION.DECRYPT)
        try:
            yield session
        finally:
            e.flush_context(session)

    def phase(self, name: str) -> contextlib.AbstractContextManager[Callable[[], object]]:
        """A context that loads what operation ``name`` needs and yields the operation."""
        t, e = self.t, self.esys
        rsassa, ecdsa = self._scheme(t.TPM2_ALG.RSASSA), self._scheme(t.TPM2_ALG.ECDSA)

        @contextlib.contextmanager
        def plain(fn: Callable[[], object]) -> Iterator[Callable[[], object]]:
            yield fn

        @contextlib.contextmanager
        def with_key(alg: str, attrs: str, op: Callable[[Any], object]) -> Iterator[Callable[[], object]]:
            with self._loaded(alg, attrs) as k:
                yield lambda: op(k)

        @contextlib.contextmanager
        def nv() -> Iterator[Callable[[], object]]:
            with self._nv_index() as idx:
                yield lambda: (e.nv_write(idx, b"n" * 32, 0), e.nv_read(idx, 32, 0))

        @contextlib.contextmanager
        def session() -> Iterator[Callable[[], object]]:
            with self._session() as sess:
                yield lambda: e.get_random(32, session1=sess)

        phases: dict[str, Callable[[], contextlib.AbstractContextManager[Callable[[], object]]]] = {
            "GetRandom": lambda: plain(lambda: e.get_random(32)),
            "PCR_Extend": lambda: plain(lambda: e.pcr_extend(t.ESYS_TR.PCR16, self.values)),
            "PCR_Read": lambda: plain(lambda: e.pcr_read(self.selection)),
            "Hash 1 KiB": lambda: plain(lambda: e.hash(self.kib, t.TPM2_ALG.SHA256, t.ESYS_TR.OWNER)),
            "Sign RSA-2048": lambda: with_key("rsa2048:rsassa-sha256:null", "sign", lambda k: e.sign(k, self.digest, rsassa, self.ticket)),
            "Sign ECC P-256": lambda: with_key("ecc256:ecdsa-sha256:null", "sign", lambda k: e.sign(k, self.digest, ecdsa, self.ticket)),
            "Quote": lambda: with_key("ecc256:ecdsa-sha256:null", "restricted|sign", lambda k: e.quote(k, self.selection, b"nonce", ecdsa)),
            "NV write+read": nv,
            "CreatePrimary RSA": lambda: plain(lambda: e.flush_context(self._primary("rsa2048:null:aes128cfb", "restricted|decrypt"))),
            "CreatePrimary ECC": lambda: plain(lambda: e.flush_context(self._primary("ecc256:null:aes128cfb", "restricted|decrypt"))),
            "GetRandom HMAC sess": session,
        }
        return phases[name]()

    def close(self) -> None:
        self.esys.close()


def measure(fn: Callable[[], object], seconds: float, max_iter: int = 100000) -> float:
    """ops/s of ``fn`` over about ``seconds`` (at least 2 calls, one warm-up excluded)."""
    fn()
    n, start = 0, time.perf_counter()
    while n < max_iter:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 2:
            break
    return n / (time.perf_counter() - start)


OPERATIONS = (
    "GetRandom", "PCR_Extend", "PCR_Read", "Hash 1 KiB", "Sign RSA-2048", "Sign ECC P-256", "Quote",
    "NV write+read", "CreatePrimary RSA", "CreatePrimary ECC", "GetRandom HMAC sess",
)


def run_interleaved(workloads: dict[str, Workload], seconds: float, rounds: int, ops: list[str]) -> dict[str, dict[str, float | str]]:
    """Best-of-``rounds`` ops/s per (target, operation); targets alternate within each round so
    that load from other processes on the machine hits all of them alike."""
    import tpm2_pytss as t

    out: dict[str, dict[str, float | str]] = {name: {} for name in workloads}
    for op in ops:
        with contextlib.ExitStack() as stack:
            fns: dict[str, Callable[[], object]] = {}
            for name, w in workloads.items():
                try:
                    fns[name] = stack.enter_context(w.phase(op))
                    fns[name]()  # warm-up, and fail early
                except t.TSS2_Exception as exc:
                    out[name][op] = f"TPM error {exc.rc:#x}"
            for _ in range(rounds):
                for name, fn in fns.items():
                    if isinstance(out[name].get(op), str):
                        continue
                    try:
                        v = measure(fn, seconds / rounds)
                    except t.TSS2_Exception as exc:
                        out[name][op] = f"TPM error {exc.rc:#x}"
                        continue
                    out[name][op] = max(v, float(out[name].get(op, 0.0)))
    return out


def _raw_commands() -> dict[str, bytes]:
    """Raw TPM commands for the persistent-connection table (no TSS involved)."""
    import struct

    pw = struct.pack(">IHBH", 0x40000009, 0, 1, 0)  # TPM_RS_PW, empty nonce, continueSession, empty auth
    digest = struct.pack(">IH", 1, 0x000B) + hashlib.sha256(b"bench").digest()
    extend = struct.pack(">I", 16) + struct.pack(">I", len(pw)) + pw + digest
    kib = struct.pack(">H", 1024) + b"k" * 1024 + struct.pack(">HI", 0x000B, 0x40000001)
    sel = struct.pack(">IHB3s", 1, 0x000B, 3, b"\x00\x00\x01")  # sha256: PCR 16
    return {
        "GetRandom": bytes.fromhex("80010000000c0000017b0020"),
        "PCR_Extend": struct.pack(">HII", 0x8002, 10 + len(extend), 0x182) + extend,
        "PCR_Read": struct.pack(">HII", 0x8001, 10 + len(sel), 0x17E) + sel,
        "Hash 1 KiB": struct.pack(">HII", 0x8001, 10 + len(kib), 0x17D) + kib,
    }


def raw_persistent(ports: dict[str, int], seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    """ops/s of raw commands over one persistent swtpm data connection per target (best of rounds)."""
    out: dict[str, dict[str, float]] = {name: {} for name in ports}
    clients = {name: SwtpmClient(port=port) for name, port in ports.items()}
    try:
        for op, cmd in _raw_commands().items():
            for name, c in clients.items():
                rsp = c.execute(cmd)
                if rsp[6:10] != b"\0\0\0\0":
                    raise RuntimeError(f"{name} answered {op} with {rsp[6:10].hex()}")
            for _ in range(rounds):
                for name, c in clients.items():
                    v = measure(lambda c=c, cmd=cmd: c.execute(cmd), seconds / rounds)
                    out[name][op] = max(v, out[name].get(op, 0.0))
    finally:
        for c in clients.values():
            c.close()
    return out


def latency_ms(transport: str, low_latency: bool, n: int) -> float:
    """Mean GetRandom round trip (ms) through tpm2-pytss over ``transport`` to our direct server."""
    with ours(transport, low_latency=low_latency) as port:
        import tpm2_pytss as t

        e = t.ESAPI(t.TCTILdr(transport, f"host=127.0.0.1,port={port}"))
        with contextlib.suppress(t.TSS2_Exception):
            e.startup(t.TPM2_SU.CLEAR)
        try:
            return 1000 / measure(lambda: e.get_random(16), 0.0, max_iter=n)
        finally:
            e.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.6, help="time budget per operation and target")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per operation (best is kept)")
    ap.add_argument("--ops", default="", help="comma-separated subset of operations")
    ap.add_argument("--no-svsm", action="store_true", help="skip the full SVSM path")
    ap.add_argument("--profile", default="", help="write a cProfile of the direct server to this file")
    ap.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        transport, port, low, direct, profile = args.serve
        _serve_child(transport, int(port), low == "1", direct == "1", profile)
        return 0
    only = {o.strip() for o in args.ops.split(",") if o.strip()}
    ops = [o for o in OPERATIONS if not only or o in only]
    with contextlib.ExitStack() as stack:
        ports = {"swtpm": stack.enter_context(swtpm())}
        ports["direct"] = stack.enter_context(ours("swtpm", profile=os.path.abspath(args.profile) if args.profile else ""))
        if not args.no_svsm:
            try:
                ports["svsm"] = stack.enter_context(ours("swtpm", direct=False))
            except RuntimeError as exc:
                print(f"(full SVSM path not measured: {exc})")
        workloads = {name: Workload("swtpm", f"host=127.0.0.1,port={port}") for name, port in ports.items()}
        for w in workloads.values():
            stack.callback(w.close)
        results = run_interleaved(workloads, args.seconds, args.rounds, ops)
        raw = raw_persistent(ports, args.seconds, args.rounds)
    cols = list(results)
    print(f"\nvTPM ops/s via tpm2-pytss, swtpm TCTI, best of {args.rounds} interleaved rounds, {args.seconds}s per op "
          "(ratio = ours / swtpm; svsm = full path, sandboxed module process)")
    header = f"{'operation':22}" + "".join(f"{c:>12}" for c in cols) + "".join(f"{c + '/swtpm':>14}" for c in cols[1:])
    print(header)
    print("-" * len(header))
    failures = []
    for op in results["swtpm"]:
        row = f"{op:22}"
        for c in cols:
            v = results[c].get(op)
            row += f"{v:12.1f}" if isinstance(v, float) else f"{'n/a':>12}"
            if isinstance(v, str):
                failures.append(f"  {c} / {op}: {v}")
        for c in cols[1:]:
            v, base = results[c].get(op), results["swtpm"][op]
            row += f"{v / base:13.2f}x" if isinstance(v, float) and isinstance(base, float) else f"{'-':>14}"
        print(row)
    if failures:
        print("not measured:\n" + "\n".join(failures))
    print("\nraw commands, one persistent data connection (no TSS, no connection per command), ops/s")
    print(f"{'operation':22}" + "".join(f"{c:>12}" for c in raw) + "".join(f"{c + '/swtpm':>14}" for c in list(raw)[1:]))
    for op in raw["swtpm"]:
        row = f"{op:22}" + "".join(f"{raw[c][op]:12.1f}" for c in raw)
        row += "".join(f"{raw[c][op] / raw['swtpm'][op]:13.2f}x" for c in list(raw)[1:])
        print(row)
    n = 200
    fast = latency_ms("mssim", True, n)
    slow = latency_ms("mssim", False, 20)
    print(f"\nGetRandom round trip over tcti-mssim to our direct server: {fast:.2f} ms with low-latency replies "
          f"(TCP_NODELAY + one write + QUICKACK), {slow:.2f} ms without -> {slow / fast:.1f}x slower without the fix")
    return 0


if __name__ == "__main__":
    sys.exit(main())
