"""IPC benchmark: a guest call to a no-op sandboxed module vs a raw socketpair round trip.

Prints, in one run: the per-call time through ``ModuleHost`` (encode, frame, sandboxed
process, decode, reply) and the time of a bare Python round trip between two processes
over a socketpair with the same number of bytes each way, their ratio (goal <= 1.3),
module start time (spawn -> serving), kernel-service throughput with 512 KiB batches
(what migration moves guest pages through), and RSS/PSS per module process.

    python bench/ipc.py [--calls N]
"""

from __future__ import annotations

import os
import sys

# bench/ holds platform.py (another benchmark), which would shadow the stdlib module here
# and in every spawned module process: drop this directory from the import path first.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from svsm.sdk import CallSpec, Manifest, Module, ProtocolSpec, Reply, hookimpl  # noqa: E402

PROTOCOL = 0x4000_0F00


class NoOp(Module):
    MANIFEST = Manifest(name="noop", version="1", protocols=[ProtocolSpec(number=PROTOCOL, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(self, request):
        return Reply(rcx=request.rcx)


class Pump(Module):
    """Moves 512 KiB batches through a kernel service, like the migrate module moving guest pages."""

    MANIFEST = Manifest(name="pump", version="1", services=["vm"])

    @hookimpl
    def svsm_module_command(self, name, payload, ctx):
        blob = b"x" * BATCH
        for _ in range(int(payload)):
            if name == "read":
                ctx.syscalls.service("vm", "read", b"")
            else:
                ctx.syscalls.service("vm", "write", blob)
        return b""


BATCH = 512 * 1024


def service_throughput(batches: int = 200) -> tuple[float, float]:
    """MiB/s of (kernel -> module, module -> kernel) 512 KiB service replies/payloads."""
    from svsm.kernel.ipc import ModuleHost, Policy

    page = b"p" * BATCH
    out = []
    with ModuleHost([Pump], mode="process", policy=Policy(privileged_modules=["pump"])) as host:
        host.register_service("vm", lambda module, op, payload: page if op == "read" else b"")
        for op in ("read", "write"):
            host.command("pump", op, b"4")
            t = time.perf_counter()
            host.command("pump", op, str(batches).encode())
            out.append(batches * BATCH / (1 << 20) / (time.perf_counter() - t))
    return out[0], out[1]


def _echo_child(sock: socket.socket) -> None:
    buf = bytearray(65536)
    while True:
        n = sock.recv_into(buf)
        if not n:
            os._exit(0)
        sock.sendall(memoryview(buf)[:n])


def raw_round_trip(calls: int, size: int) -> float:
    """Seconds per round trip of ``size`` bytes between two processes over a socketpair."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        _echo_child(b)
    b.close()
    msg = b"x" * size
    buf = bytearray(65536)
    for _ in range(200):
        a.sendall(msg)
        a.recv_into(buf)
    t = time.perf_counter()
    for _ in range(calls):
        a.sendall(msg)
        got = a.recv_into(buf)
        while got < size:
            got += a.recv_into(memoryview(buf)[got:])
    dt = (time.perf_counter() - t) / calls
    a.close()
    os.waitpid(pid, 0)
    return dt


def _mem(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def codec_cost(n: int = 50_000) -> tuple[float, float]:
    """(declared, array_like twin) seconds to encode + decode one CallRequest and one CallResult."""
    import msgspec

    from svsm.sdk.abi import CallRequest, CallResult

    def twin(cls: type) -> type:
        fields = [(f.name, f.type, f.default) for f in msgspec.structs.fields(cls)]
        return msgspec.defstruct(cls.__name__, fields, tag=cls.__struct_config__.tag, tag_field="t", array_like=True, frozen=True)

    out = []
    for req_t, res_t in ((CallRequest, CallResult), (twin(CallRequest), twin(CallResult))):
        enc = msgspec.msgpack.Encoder()
        dreq, dres = msgspec.msgpack.Decoder(req_t), msgspec.msgpack.Decoder(res_t)
        req, res = req_t(id=1, protocol=PROTOCOL, call=0, rcx=5), res_t(id=1, rcx=5)
        t = time.perf_counter()
        for _ in range(n):
            dreq.decode(enc.encode(req))
            dres.decode(enc.encode(res))
        out.append((time.perf_counter() - t) / n)
    return out[0], out[1]


def main() -> None:
    from svsm.kernel.ipc import ModuleHost, Policy
    from svsm.sdk.abi import CallRequest, CallResult, Channel

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--starts", type=int, default=3)
    args = ap.parse_args()

    # frame sizes of one call, to give the baseline the same bytes on the wire
    k, mod = Channel("kernel"), Channel("module")
    req = len(k.send(CallRequest(id=1, protocol=PROTOCOL, call=0, rcx=12345)))
    rep = len(mod.send(CallResult(id=1, rcx=12345)))
    size = max(req, rep)

    starts = []
    for _ in range(args.starts):
        t = time.perf_counter()
        host = ModuleHost([NoOp], mode="process").start()
        starts.append(time.perf_counter() - t)
        host.close()

    def measure(policy: Policy) -> tuple[float, tuple[str, ...], int, int]:
        with ModuleHost([NoOp], mode="process", policy=policy) as host:
            for i in range(300):
                host.call(PROTOCOL, 0, rcx=i)
            samples = []
            for _ in range(5):
                t = time.perf_counter()
                for i in range(args.calls // 5):
                    host.call(PROTOCOL, 0, rcx=i)
                samples.append((time.perf_counter() - t) / (args.calls // 5))
            rss, pss = _mem(host.module("noop").pid)
            return min(samples), host.module("noop").protections, rss, pss

    ours, protections, rss, pss = measure(Policy())
    fast, _, _, _ = measure(Policy(speculation_mitigations=False))
    base = min(raw_round_trip(args.calls // 5, size) for _ in range(5))

    print(f"module call (sandboxed no-op):   {ours * 1e6:8.1f} us/call  (frames {req}/{rep} bytes)")
    print(f"  same, seccomp spec-allow:      {fast * 1e6:8.1f} us/call")
    print(f"raw socketpair round trip:       {base * 1e6:8.1f} us/call  ({size} bytes each way)")
    print(f"ratio:                           {ours / base:8.2f}  (spec-allow {fast / base:.2f}; goal <= 1.3)")
    dict_codec, array_codec = codec_cost()
    print(f"codec per call (dict / array_like): {dict_codec * 1e6:6.2f} / {array_codec * 1e6:.2f} us"
          f"  ({(dict_codec - array_codec) / ours:.1%} of a call: array_like not adopted)")
    print(f"module start (spawn -> serving): {statistics.median(starts) * 1e3:8.1f} ms median of {len(starts)}")
    down, up = service_throughput()
    print(f"kernel service, 512 KiB batches: {down:8.0f} MiB/s kernel->module, {up:.0f} MiB/s module->kernel")
    print(f"module process memory:           RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB")
    print(f"protections in force:            {', '.join(protections)}")


if __name__ == "__main__":
    main()
