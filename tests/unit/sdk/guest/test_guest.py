"""The guest driver: calling convention details, retries, AP lifecycle, attestation checks."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from svsm.sdk import Busy, RequestError, ResultCode
from svsm.sdk.guest import Attestation, PagePool, SvsmCallResult


class BusyHost:
    """Protocol 9 answers BUSY ``busy`` times, then SUCCESS with RCX = attempts."""

    def __init__(self) -> None:
        self.busy = 0
        self.attempts = 0

    def serves(self, protocol: int) -> bool:
        return protocol == 9

    def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
        return (1, 1) if protocol == 9 else None

    def handle_request(self, params: Any, memory: Any) -> None:
        self.attempts += 1
        if self.attempts <= self.busy:
            raise Busy("later")
        params.rcx = self.attempts

    def service_manifests(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        return []


@pytest.fixture
def cvm() -> Iterator[Any]:
    from svsm.kernel import boot

    with boot(vcpus=2, memory="12M", module_host=BusyHost()) as c:
        c.guest.accept_memory(0x10_0000, 0x10_0000)
        yield c


def test_page_pool() -> None:
    pool = PagePool([0x3000, 0x1000])
    pool.add(0x10000, 0x2000)
    assert len(pool) == 4
    got = {pool.take() for _ in range(4)}
    assert got == {0x1000, 0x3000, 0x10000, 0x11000}
    with pytest.raises(Exception):  # noqa: B017 -- out of accepted memory is fatal for the guest
        pool.take()
    pool.give(0x5000)
    assert pool.take() == 0x5000


def test_result_raise() -> None:
    assert SvsmCallResult(0, 1, 2, 3, 4).raise_for_result().rcx == 1
    with pytest.raises(RequestError) as ei:
        SvsmCallResult(ResultCode.INVALID_ADDRESS, 0, 0, 0, 0).raise_for_result()
    assert ei.value.code == ResultCode.INVALID_ADDRESS


def test_busy_is_retried(cvm: Any) -> None:
    host = cvm.svsm.module_host
    host.busy = 3
    r = cvm.guest.svsm_call(9, 0)
    assert (r.rax, r.rcx) == (0, 4)
    host.busy, host.attempts = 10, 0
    assert cvm.guest.svsm_call(9, 0, max_retries=2).rax == ResultCode.BUSY


def test_ap_lifecycle(cvm: Any) -> None:
    g = cvm.guest
    ap = g.start_ap(1)
    assert ap.cpu.apic_id == 1 and ap.vmpl == g.vmpl and ap.caa != g.caa
    assert ap.query_protocol(0) == (1, 1)
    free = len(g.pool)
    g.stop_ap(1)
    assert len(g.pool) == free + 2
    assert cvm.svsm.registry.statistics().registered == 1
    with pytest.raises(RequestError):
        g.start_ap(5)
    ap2 = g.start_ap(1)  # the same vCPU can be brought up again
    assert ap2.query_protocol(1) == (1, 1)


def test_attestation_verify_rejects_tampering(cvm: Any) -> None:
    from svsm.sdk.attestation import VerificationError

    att = cvm.guest.attest(bytes(range(64)))
    att.verify()
    with pytest.raises(VerificationError):
        dataclasses.replace(att, nonce=bytes(64)).verify()
    with pytest.raises(VerificationError):
        dataclasses.replace(att, certificates={}).verify()
    bad = bytearray(att.report)
    bad[0x50] ^= 1
    with pytest.raises(VerificationError):
        Attestation(att.nonce, bytes(bad), att.manifest, att.manifest_bytes, att.certificates).verify()


def test_secrets_vmpl_mismatch_is_refused(cvm: Any) -> None:
    from svsm.sdk import FatalError
    from svsm.sdk.guest import Guest

    fake = cvm.guest.pool.take()
    cvm.guest.mem.write(fake, bytes(4096))  # a "secrets page" without the SVSM fields
    with pytest.raises(FatalError):
        Guest(cvm.platform.vcpus[0], 2, secrets_gpa=fake, ram=cvm.layout.guest_ram)


def test_page_pool_contiguous() -> None:
    pool = PagePool([0x1000, 0x3000, 0x4000, 0x5000, 0x9000])
    assert pool.take_contiguous(3) == [0x3000, 0x4000, 0x5000]
    assert len(pool) == 2
    with pytest.raises(Exception):  # noqa: B017 -- FatalError: no run of 2 left
        pool.take_contiguous(2)
    assert pool.take_contiguous(1) == [0x1000]


def test_one_guest_driven_from_several_threads(cvm: Any) -> None:
    """Host threads sharing one guest vCPU take turns (a vCPU runs one instruction stream)."""
    import threading

    g = cvm.guest
    out: list[Any] = []

    from svsm.sdk.guest import PvalidateEntry

    def work() -> None:
        page = g.pool.take()
        for _ in range(15):
            out.append(g.query_protocol(0))
            g.pvalidate([PvalidateEntry(page, ignore_cf=True)])  # the list lives in the shared CA buffer

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert out == [(1, 1)] * 45


def test_attestation_pins_the_root(cvm: Any) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from svsm.sdk.attestation import VerificationError

    att = cvm.guest.attest(bytes(64))
    assert att.verify(trusted_arks=[cvm.psp.chip.ark_cert]).vmpl == 0
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "ARK-Other")])
    now = datetime.datetime.now(datetime.timezone.utc)
    other = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
             .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
             .sign(key, hashes.SHA384()))  # fmt: skip
    with pytest.raises(VerificationError):
        att.verify(trusted_arks=[other])


def test_statistics(cvm: Any) -> None:
    g = cvm.guest
    before = g.statistics()
    g.query_protocol(0)
    g.start_ap(1)
    after = g.statistics()
    assert after.calls >= before.calls + 2 and after.aps == 1 and after.accepted_pages == 256
    assert after.free_pages < before.free_pages


def test_acceptable_pages_are_ram_minus_reserved_minus_accepted() -> None:
    """accept_memory's page list (computed by interval) is the per-page definition."""
    import types

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from svsm.sdk.guest import Guest

    page = 0x1000
    ranges = st.lists(st.tuples(st.integers(0, 64), st.integers(0, 16)), max_size=4)

    @settings(max_examples=200, deadline=None)
    @given(ranges, ranges, st.sets(st.integers(0, 80)), st.integers(0, 70), st.integers(0, 40), st.booleans())
    def check(ram: Any, reserved: Any, accepted: Any, start: int, n: int, unaligned: bool) -> None:
        ram_r, cur = [], 0
        for gap, length in ram:  # disjoint, ascending RAM ranges
            ram_r.append(((cur + gap) * page, (cur + gap + length) * page))
            cur += gap + length
        res = [(s * page + (0x800 if unaligned else 0), n_ * page) for s, n_ in reserved]
        g = types.SimpleNamespace(ram=tuple(ram_r), reserved=tuple(res), accepted={a * page for a in accepted})
        gpa, size = start * page + (0x10 if unaligned and start % 3 == 0 else 0), n * page
        want = [p for p in range(gpa, gpa + size, page) if p not in g.accepted
                and any(s <= p < e for s, e in g.ram) and not any(s <= p < s + k for s, k in g.reserved)]
        assert Guest._acceptable(g, gpa, size) == want  # type: ignore[arg-type]

    check()


def test_services_attestation_must_come_from_vmpl0() -> None:
    """SECREVIEW 01:05: a guest VMPL gets reports with REPORT_DATA of its choice; such a report
    must not verify as the SVSM's services attestation for a manifest the guest made up."""
    import hashlib

    from svsm.kernel import boot
    from svsm.sdk.attestation import VerificationError
    from svsm.sdk.guest._abi import ServicesManifest

    nonce = b"relying party".ljust(64, b"\0")
    forged = ServicesManifest(((uuid.UUID(int=1), b"fake vTPM EK"),)).to_bytes()
    with boot(vcpus=1, memory="12M") as cvm:
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x10_0000)
        genuine = g.attest(nonce)
        assert genuine.verify(trusted_arks=[cvm.psp.chip.ark_cert]).vmpl == 0
        report = cvm.psp.build_report(cvm.psp_context, hashlib.sha512(nonce + forged).digest(), 2)
        fake = Attestation(nonce, report, ServicesManifest.from_bytes(forged), forged, genuine.certificates)
        with pytest.raises(VerificationError):
            fake.verify(trusted_arks=[cvm.psp.chip.ark_cert])


def test_the_pool_accepts_memory_on_demand_then_runs_out_with_a_request_error() -> None:
    """LEAD 00:50: attest() right after boot works (the pool accepts the next 2 MiB chunk when
    dry, as Linux accepts unaccepted memory lazily); a really exhausted guest gets a RequestError."""
    import os

    from svsm.kernel import boot
    from svsm.sdk.guest import GuestOutOfMemory

    with boot(vcpus=1, memory="12M") as vm:
        g = vm.guest
        assert not g.accepted
        assert vm.guest.attest(os.urandom(64)).verify().vmpl == 0
        first = len(g.accepted)
        assert 0 < first <= 512  # one 2 MiB chunk, less what is reserved
        with pytest.raises(GuestOutOfMemory) as err:
            while True:
                g.pool.take()
        assert isinstance(err.value, RequestError)
        ram_pages = sum(e - s for s, e in g.ram) // 0x1000
        assert len(g.accepted) == ram_pages - sum(1 for p in range(0, ram_pages * 0x1000, 0x1000)
                                                  if any(s <= p < s + n for s, n in g.reserved))
