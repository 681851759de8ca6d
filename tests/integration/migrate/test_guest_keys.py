"""The guest's own PSP channel survives migration: a report request sealed with VMPCK2 at the next
sequence number -- both read from the guest's secrets page -- is accepted by the destination's PSP."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading

from svsm.kernel import boot
from svsm.kernel.hw import PageStateChangeRequest, SwExitCode
from svsm.kernel.migration import MigratableVm, RunGate
from svsm.modules.migrate import MeasurementPolicy, Role, make_channel, make_verifier, migrate_destination, migrate_source
from svsm.sdk.attestation import (
    SNP_REPORT_REQ,
    SNP_REPORT_RSP,
    SNP_SECRETS_PAGE,
    GuestMessageClient,
    MsgType,
    load_chain,
    verify_report,
)
from svsm.sdk.guest import PvalidateEntry

PAGE = 4096
SEQNO_2 = SNP_SECRETS_PAGE.msg_seqno_2.offset


def _shared_pages(g, n: int) -> list[int]:
    pages = g.pool.take_contiguous(n)
    g.pvalidate([PvalidateEntry(p, validate=False) for p in pages])
    for p in pages:
        g._msr(PageStateChangeRequest(p >> 12, 2).encode())  # the guest OS's own PSC (as for its GHCB)
    return pages


def _report(g, req_gpa: int, report_data: bytes) -> bytes:
    """MSG_REPORT_REQ on VMPCK2, key and counter from the guest's secrets page (as Linux's sev-guest)."""
    secrets = SNP_SECRETS_PAGE.from_buffer_copy(g.mem.read(g.secrets_gpa, PAGE))
    client = GuestMessageClient(secrets.vmpck(2), 2, secrets.msg_seqno_2)
    req = SNP_REPORT_REQ(vmpl=2)
    req.report_data[:] = report_data
    g.mem.write(req_gpa, client.request(MsgType.REPORT_REQ, bytes(req)), c_bit=False)
    ghcb = g._nae(SwExitCode.SNP_GUEST_REQUEST, req_gpa, req_gpa + PAGE)
    assert ghcb.sw_exit_info_2 == 0, hex(ghcb.sw_exit_info_2)
    payload = client.response(g.mem.read(req_gpa + PAGE, PAGE, c_bit=False))
    g.mem.write(g.secrets_gpa + SEQNO_2, client.counter.to_bytes(4, "little"))
    rsp = SNP_REPORT_RSP.from_buffer_copy(payload[: ctypes.sizeof(SNP_REPORT_RSP)])
    assert rsp.status == 0
    return bytes(rsp.report)[: rsp.report_size]


def test_guest_vmpck_and_sequence_continue_on_the_destination_psp() -> None:
    with contextlib.ExitStack() as st:
        src = st.enter_context(boot(vcpus=1, memory="16M"))
        dst = st.enter_context(boot(vcpus=1, memory="16M", seed=9))
        assert src.psp_context.vmpcks[2] != dst.psp_context.vmpcks[2]
        g = src.guest
        g.accept_memory(0, src.layout.svsm_base)
        req = _shared_pages(g, 2)[0]
        before = verify_report(_report(g, req, b"\x01" * 64), load_chain(*src.psp.chip.chain_pem()))
        assert before.vmpl == 2
        svm, dvm = MigratableVm(src), MigratableVm(dst, gate=RunGate(paused=True))
        a, b = socket.socketpair()
        res = {}
        ver_d = make_verifier(dst.psp.chip.chain_pem()[0], MeasurementPolicy.same_as(dst.measurement))
        t = threading.Thread(target=lambda: res.setdefault("d", migrate_destination(
            dvm, b, make_channel(dvm, Role.DESTINATION, ver_d, os.urandom))))  # fmt: skip
        t.start()
        ver_s = make_verifier(src.psp.chip.chain_pem()[0], MeasurementPolicy.same_as(src.measurement))
        s = migrate_source(svm, a, make_channel(svm, Role.SOURCE, ver_s, os.urandom))
        t.join(30)
        assert s.result == res["d"].result == "committed"
        dg = dst.guest
        dg._ghcb_gpa = g._ghcb_gpa  # the guest OS's per-CPU GHCB pointer (in its memory on real Linux)
        raw = _report(dg, req, b"\x02" * 64)  # the destination PSP accepts the guest's key and counter
        after = verify_report(raw, load_chain(*dst.psp.chip.chain_pem()))
        assert after.vmpl == 2 and after.report_data == b"\x02" * 64
        secrets = SNP_SECRETS_PAGE.from_buffer_copy(dg.mem.read(dg.secrets_gpa, PAGE))
        assert secrets.msg_seqno_2 == 4 and dst.psp_context.seqnos[2] == 4  # two exchanges, one per side
