"""The attestation protocol: reports bound to nonce and manifest, every error and size report."""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svsm.kernel.protocols import GuestMemoryWindow, RequestParams
from svsm.sdk import ResultCode
from svsm.sdk.attestation import AttestationReport
from svsm.sdk.guest import (
    SVSM_ATTEST_PROTOCOL,
    SVSM_REQ_ATTEST_SERVICES,
    SVSM_REQ_ATTEST_SINGLE_SERVICE,
    AttestServicesOp,
    AttestSingleServiceOp,
    ServicesManifest,
)

RC = ResultCode
PAGE = 0x1000
SVC_A = uuid.UUID("c476f1eb-0123-45a5-9641-b4e7dde5bfe3")
SVC_B = uuid.UUID(int=0xB)


class Services:
    """A module host that serves no calls but contributes two services to the manifest."""

    def serves(self, protocol: int) -> bool:
        return False

    def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
        return None

    def handle_request(self, params: RequestParams, memory: GuestMemoryWindow) -> None:
        raise AssertionError("not called")

    def service_manifests(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        return [(SVC_A, b"EK public " * 30), (SVC_B, b"b")]


@pytest.fixture
def guest() -> Iterator[Any]:
    from svsm.kernel import boot

    with boot(vcpus=1, memory="12M", module_host=Services()) as cvm:
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x30_0000)
        g.cvm = cvm
        yield g


class Bufs:
    def __init__(self, g: Any) -> None:
        self.op, self.report, self.manifest = g.pool.take(), g.pool.take(), g.pool.take()
        self.certs = g._grow([], 4 * PAGE)[0]
        self.nonce = self.op + 0x800

    def op_for(self, **kw: int) -> AttestServicesOp:
        args = dict(report_gpa=self.report, report_size=PAGE, nonce_gpa=self.nonce, nonce_size=64,
                    manifest_gpa=self.manifest, manifest_size=PAGE, certificate_gpa=self.certs,
                    certificate_size=0x4000)  # fmt: skip
        args.update(kw)
        return AttestServicesOp(**args)


def call(g: Any, b: Bufs, raw: bytes, single: bool = False) -> Any:
    g.mem.write(b.op, raw)
    g.mem.write(b.nonce, bytes(range(64)))
    return g.svsm_call(SVSM_ATTEST_PROTOCOL, SVSM_REQ_ATTEST_SINGLE_SERVICE if single else SVSM_REQ_ATTEST_SERVICES, b.op)


def test_attest_services_verified(guest: Any) -> None:
    nonce = os.urandom(64)
    att = guest.attest(nonce)
    report = att.verify()
    assert report.vmpl == 0 and report.measurement == guest.cvm.measurement
    assert report.report_data == hashlib.sha512(nonce + att.manifest_bytes).digest()
    assert [g for g, _ in att.manifest.services] == [SVC_A, SVC_B]
    assert len(att.certificates) == 3


def test_attest_single_service(guest: Any) -> None:
    att = guest.attest(bytes(64), SVC_B)
    assert att.manifest.services == ((SVC_B, b"b"),)
    att.verify()
    b = Bufs(guest)
    r = call(guest, b, AttestSingleServiceOp(b.op_for(), uuid.UUID(int=99)).to_bytes(), single=True)
    assert r.rax == RC.UNSUPPORTED_PROTOCOL


def test_sizes_reported_with_the_error(guest: Any) -> None:
    b = Bufs(guest)
    mlen = len(ServicesManifest(tuple(Services().service_manifests())).to_bytes())
    r = call(guest, b, b.op_for(report_size=0x100).to_bytes())
    assert (r.rax, r.rcx, r.r8) == (RC.INVALID_PARAMETER, mlen, 0x4A0)
    r = call(guest, b, b.op_for(manifest_size=16).to_bytes())
    assert (r.rax, r.rcx) == (RC.INVALID_PARAMETER, mlen)
    r = call(guest, b, b.op_for(certificate_size=PAGE).to_bytes())  # the chain needs 2 pages
    assert (r.rax, r.rdx) == (RC.INVALID_PARAMETER, 2 * PAGE)
    r = call(guest, b, b.op_for(certificate_gpa=0, certificate_size=0).to_bytes())
    assert (r.rax, r.rcx, r.rdx, r.r8) == (RC.SUCCESS, mlen, 0, 0x4A0)
    report = AttestationReport.from_bytes(guest.mem.read(b.report, 0x4A0))
    manifest = guest.mem.read(b.manifest, mlen)
    assert report.report_data == hashlib.sha512(bytes(range(64)) + manifest).digest()
    r = call(guest, b, b.op_for().to_bytes())  # still in sequence after the too-small round trip
    assert r.rax == RC.SUCCESS and 0 < r.rdx <= 0x4000


@pytest.mark.parametrize("offset", [0x0C, 0x1A, 0x2C, 0x3C])
def test_reserved_bytes(guest: Any, offset: int) -> None:
    b = Bufs(guest)
    raw = bytearray(b.op_for().to_bytes())
    raw[offset] = 1
    assert call(guest, b, bytes(raw)).rax == RC.INVALID_PARAMETER


def test_op_field_checks(guest: Any) -> None:
    b = Bufs(guest)
    raw = bytearray(b.op_for().to_bytes())
    struct.pack_into("<H", raw, 0x18, 32)  # nonce size
    assert call(guest, b, bytes(raw)).rax == RC.INVALID_PARAMETER
    raw = bytearray(b.op_for().to_bytes())
    struct.pack_into("<Q", raw, 0x10, b.op + 0xFF0)  # nonce crosses a page
    assert call(guest, b, bytes(raw)).rax == RC.INVALID_PARAMETER
    raw = bytearray(AttestSingleServiceOp(b.op_for(), SVC_A).to_bytes())
    struct.pack_into("<I", raw, 0x50, 1)  # manifest version
    assert call(guest, b, bytes(raw), single=True).rax == RC.INVALID_PARAMETER


def test_addresses(guest: Any) -> None:
    b = Bufs(guest)
    svsm = guest.cvm.layout.svsm_base
    assert call(guest, b, b.op_for(report_gpa=svsm).to_bytes()).rax == RC.INVALID_ADDRESS
    assert call(guest, b, b.op_for(manifest_gpa=0x60_0000).to_bytes()).rax == RC.INVALID_ADDRESS
    assert call(guest, b, b.op_for(nonce_gpa=svsm + 0x40).to_bytes()).rax == RC.INVALID_ADDRESS
    assert guest.svsm_call(SVSM_ATTEST_PROTOCOL, SVSM_REQ_ATTEST_SERVICES, svsm).rax == RC.INVALID_ADDRESS
    assert guest.svsm_call(SVSM_ATTEST_PROTOCOL, SVSM_REQ_ATTEST_SERVICES, 1 << 45).rax == RC.INVALID_ADDRESS


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=0x58, max_size=0x58), single=st.booleans(), fix=st.integers(0, 3))
def test_fuzz_attest_op(guest: Any, raw: bytes, single: bool, fix: int) -> None:
    b = Bufs(guest)
    raw = bytearray(raw)
    if fix & 1:  # make some inputs plausible so the deep paths run too
        raw[:0x40] = b.op_for(report_size=int.from_bytes(raw[8:12], "little")).to_bytes()
    if fix & 2:
        raw[0x50:0x58] = bytes(8)
    r = call(guest, b, bytes(raw), single)
    assert r.rax in (RC.SUCCESS, RC.INVALID_PARAMETER, RC.INVALID_ADDRESS, RC.UNSUPPORTED_PROTOCOL)
    assert guest.cvm.svsm.panicker.panicked is None
    for p in (b.op, b.report, b.manifest):
        guest.pool.give(p)


def test_tampered_psp_response_is_invalid_request_and_burns_the_channel() -> None:
    """A host that flips a bit of the PSP's response: the SVSM answers INVALID_REQUEST and never
    uses VMPCK0 again (no IV reuse), as Linux and COCONUT do."""
    from svsm.kernel import boot
    from svsm.kernel.hw import Hypervisor

    class Tamper(Hypervisor):
        def nae_snp_ext_guest_request(self, vcpu: Any, ghcb: Any) -> None:
            resp = ghcb.sw_exit_info_2
            super().nae_snp_ext_guest_request(vcpu, ghcb)
            page = bytearray(self.platform.host.read(resp, PAGE))
            page[0x70] ^= 1
            self.platform.host.write(resp, bytes(page))

    with boot(vcpus=1, memory="12M", hypervisor=Tamper()) as cvm:
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x10_0000)
        b = Bufs(g)
        assert call(g, b, b.op_for().to_bytes()).rax == RC.INVALID_REQUEST
        assert call(g, b, b.op_for(certificate_gpa=0, certificate_size=0).to_bytes()).rax == RC.INVALID_REQUEST
        assert cvm.psp.statistics().reports == 1  # the PSP answered once; nothing was sent afterwards
