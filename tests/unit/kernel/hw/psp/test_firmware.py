"""The PSP model: launch lifecycle, guest messages (replay/tamper/wrong key), reports, derived keys."""

from __future__ import annotations

import ctypes
import dataclasses

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svsm.kernel.hw.psp import (
    Chip,
    FirmwareImage,
    FwError,
    LaunchState,
    PageType,
    PspError,
    SectionType,
    SnpFirmware,
    VmmError,
    build_image,
    calc_launch_digest,
    launch,
    launch_plan,
)
from svsm.sdk.attestation import (
    ARK_GUID,
    ASK_GUID,
    SNP_KEY_REQ,
    SNP_KEY_RSP,
    SNP_REPORT_REQ,
    SNP_REPORT_RSP,
    SNP_SECRETS_PAGE,
    VCEK_GUID,
    TcbVersion,
    AttestationReport,
    CertChain,
    GuestMessageClient,
    MsgType,
    VerificationError,
    load_chain,
    parse_cert_table,
    seal_message,
    verify_report,
    verify_report_signature,
)

#: The second chip the tests share (test_chip.py makes the same one).
TURIN_TCB = TcbVersion(boot_loader=1, tee=2, snp=3, microcode=4, fmc=5)
SECTIONS = [(0x800000, 0x2000, SectionType.SNP_SEC_MEM), (0x802000, 0x1000, SectionType.SNP_SECRETS),
            (0x803000, 0x1000, SectionType.CPUID)]  # fmt: skip
IMAGE = FirmwareImage.parse(build_image(0x4000, sections=SECTIONS))


@pytest.fixture(scope="session")
def chip(tmp_path_factory: pytest.TempPathFactory) -> Chip:
    return Chip.load_or_create(tmp_path_factory.getbasetemp() / "psp-chip")


@pytest.fixture(scope="session")
def chain(chip: Chip) -> CertChain:
    return load_chain(*chip.chain_pem())


class Guest:
    """A launched guest plus guest-side clients for VMPCK0..3."""

    def __init__(self, fw: SnpFirmware, vcpus: int = 1, policy: int = 0x30000, **finish: object) -> None:
        self.fw = fw
        self.ctx = fw.launch_start(policy)
        secrets = None
        for u in launch_plan(IMAGE, vcpus=vcpus, vcpu_sig=0xA00F11):
            if u.page_type is PageType.NORMAL:
                fw.launch_update_normal(self.ctx, u.gpa, u.data)  # type: ignore[arg-type]
                continue
            for gpa in range(u.gpa, u.gpa + u.size, 4096):
                page = fw.launch_update(self.ctx, u.page_type, gpa, u.data if u.page_type is PageType.VMSA else None)
                if u.page_type is PageType.SECRETS:
                    secrets = SNP_SECRETS_PAGE.from_buffer_copy(page)
        self.measurement = fw.launch_finish(self.ctx, **finish)  # type: ignore[arg-type]
        assert secrets is not None
        self.secrets = secrets
        self.clients = [GuestMessageClient(secrets.vmpck(i), i) for i in range(4)]

    def ask(self, vmpck: int, msg_type: MsgType, payload: bytes) -> bytes:
        c = self.clients[vmpck]
        return c.response(self.fw.guest_request(self.ctx, c.request(msg_type, payload)))

    def report(self, data: bytes = b"", vmpl: int = 0, vmpck: int = 0, flags: int = 0) -> SNP_REPORT_RSP:
        req = SNP_REPORT_REQ(vmpl=vmpl, flags=flags)
        ctypes.memmove(req.report_data, data.ljust(64, b"\0"), 64)
        return SNP_REPORT_RSP.from_buffer_copy(self.ask(vmpck, MsgType.REPORT_REQ, bytes(req)))

    def key(self, vmpck: int = 0, *, short: bool = False, **fields: int) -> SNP_KEY_RSP:
        payload = bytes(SNP_KEY_REQ(**fields))
        return SNP_KEY_RSP.from_buffer_copy(self.ask(vmpck, MsgType.KEY_REQ, payload[:32] if short else payload))


@pytest.fixture
def fw(chip: Chip) -> SnpFirmware:
    return SnpFirmware(chip)


# -- launch ---------------------------------------------------------------------------------


def test_launch_measurement_matches_calc(fw: SnpFirmware) -> None:
    g = Guest(fw, vcpus=3)
    assert g.measurement == calc_launch_digest(IMAGE, vcpus=3, vcpu_sig=0xA00F11)
    assert g.ctx.state is LaunchState.RUNNING
    assert g.secrets.version == 3 and g.secrets.fms == 0xA00F11
    assert len({g.secrets.vmpck(i) for i in range(4)}) == 4


def test_launch_driver_writes_every_page(fw: SnpFirmware) -> None:
    written: list[tuple[PageType, int, int]] = []
    result = launch(fw, launch_plan(IMAGE, vcpus=2, vcpu_sig=1),
                    write=lambda t, gpa, data, vcpu: written.append((t, gpa, len(data))))  # fmt: skip
    assert (PageType.NORMAL, IMAGE.gpa, len(IMAGE.data)) in written
    assert [w for w in written if w[0] is PageType.VMSA] == [(PageType.VMSA, 0xFFFFFFFFF000, 4096)] * 2
    assert result.secrets_gpa == 0x802000 and result.secrets_page is not None
    assert result.measurement == calc_launch_digest(IMAGE, vcpus=2, vcpu_sig=1)


def test_lifecycle_is_enforced(fw: SnpFirmware) -> None:
    ctx = fw.launch_start()
    with pytest.raises(PspError) as info:
        fw.guest_request(ctx, bytes(4096))
    assert info.value.fw_error is FwError.INVALID_GUEST_STATE
    fw.launch_finish(ctx)
    with pytest.raises(PspError):
        fw.launch_update(ctx, PageType.ZERO, 0)
    fw.decommission(ctx)
    with pytest.raises(PspError):
        fw.guest_request(ctx, bytes(4096))


@pytest.mark.parametrize("policy", [0x0, 0x30000 | (1 << 30)])
def test_bad_policy(fw: SnpFirmware, policy: int) -> None:
    with pytest.raises(PspError) as info:
        fw.launch_start(policy)
    assert info.value.fw_error is FwError.INVALID_PARAM


def test_launch_update_checks(fw: SnpFirmware) -> None:
    ctx = fw.launch_start()
    with pytest.raises(PspError):
        fw.launch_update(ctx, PageType.NORMAL, 0x1000, b"short")
    with pytest.raises(PspError):
        fw.launch_update(ctx, PageType.ZERO, 0x1001)


# -- guest messages -------------------------------------------------------------------------


def test_replayed_request_is_refused_and_nothing_advances(fw: SnpFirmware) -> None:
    g = Guest(fw)
    c = g.clients[0]
    page = c.request(MsgType.REPORT_REQ, bytes(SNP_REPORT_REQ()))
    c.response(fw.guest_request(g.ctx, page))
    with pytest.raises(PspError) as info:
        fw.guest_request(g.ctx, page)  # replay
    assert info.value.fw_error is FwError.INVALID_PARAM
    assert g.report(b"after").status == 0  # the channel still works with the right seqno
    assert fw.statistics().requests_refused == 1


@pytest.mark.parametrize("pos", [0x00, 0x20, 0x34, 0x36, 0x3C, 0x60, 0x60 + 95])
def test_modified_request_is_refused(fw: SnpFirmware, pos: int) -> None:
    g = Guest(fw)
    page = bytearray(g.clients[0].request(MsgType.REPORT_REQ, bytes(SNP_REPORT_REQ())))
    page[pos] ^= 0x01
    with pytest.raises(PspError):
        fw.guest_request(g.ctx, bytes(page))


def test_skipped_sequence_number_is_refused(fw: SnpFirmware) -> None:
    g = Guest(fw)
    page = seal_message(g.secrets.vmpck(0), seqno=3, msg_type=MsgType.REPORT_REQ, vmpck=0, payload=bytes(96))
    with pytest.raises(PspError):
        fw.guest_request(g.ctx, page)


def test_wrong_vmpck_is_refused(fw: SnpFirmware) -> None:
    g = Guest(fw)
    for key, index in ((bytes(range(32)), 0), (g.secrets.vmpck(1), 0), (g.secrets.vmpck(0), 2)):
        page = seal_message(key, seqno=1, msg_type=MsgType.REPORT_REQ, vmpck=index, payload=bytes(96))
        with pytest.raises(PspError):
            fw.guest_request(g.ctx, page)


def test_response_is_bound_to_request(fw: SnpFirmware) -> None:
    g = Guest(fw)
    c = g.clients[1]
    rsp = fw.guest_request(g.ctx, c.request(MsgType.REPORT_REQ, bytes(SNP_REPORT_REQ(vmpl=1))))
    other = GuestMessageClient(g.secrets.vmpck(2), 2)
    other.request(MsgType.REPORT_REQ, b"")
    with pytest.raises(Exception):
        other.response(rsp)  # sealed under VMPCK1, not VMPCK2
    assert SNP_REPORT_RSP.from_buffer_copy(c.response(rsp)).status == 0


def test_unknown_message_type_is_refused(fw: SnpFirmware) -> None:
    g = Guest(fw)
    with pytest.raises(PspError):
        fw.guest_request(g.ctx, g.clients[0].request(MsgType.CPUID_REQ, b"\0" * 16))


# -- reports --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3, 5])
def test_report_versions_verify(chip: Chip, chain: CertChain, version: int) -> None:
    fw = SnpFirmware(chip, report_version=version)
    g = Guest(fw, host_data=b"h" * 32, image_id=b"i" * 16, family_id=b"f" * 16, guest_svn=4)
    rsp = g.report(b"nonce", vmpl=2)
    assert (rsp.status, rsp.report_size) == (0, 0x4A0)
    r = verify_report(bytes(rsp.report), chain)
    assert r.version == version and r.vmpl == 2 and r.report_data == b"nonce".ljust(64, b"\0")
    assert r.measurement == g.measurement and r.host_data == b"h" * 32 and r.guest_svn == 4
    assert (r.image_id, r.family_id, r.policy) == (b"i" * 16, b"f" * 16, 0x30000)
    assert r.chip_id == chip.chip_id and r.reported_tcb == chip.raw_tcb == r.current_tcb == r.launch_tcb
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == ((0x19, 0x01, 0x1) if version >= 3 else (None,) * 3)
    assert (r.launch_mit_vector is None) == (version < 5)
    assert r.report_id == AttestationReport.from_bytes(bytes(g.report().report)).report_id


def test_every_signed_bit_matters(fw: SnpFirmware, chain: CertChain) -> None:
    r = AttestationReport.from_bytes(bytes(Guest(fw).report(b"x").report))
    verify_report_signature(r, chain.vcek)
    for pos in range(0x2A0):
        raw = bytearray(r.raw)
        raw[pos] ^= 1 << (pos % 8)
        with pytest.raises(VerificationError):
            verify_report_signature(dataclasses.replace(r, raw=bytes(raw)), chain.vcek)


@pytest.mark.parametrize(
    ("vmpck", "vmpl", "flags", "status"),
    [(1, 0, 0, FwError.INVALID_PARAM), (0, 4, 0, FwError.INVALID_PARAM), (0, 0, 3, FwError.INVALID_PARAM),
     (0, 0, 4, FwError.INVALID_PARAM), (0, 0, 2, FwError.INVALID_KEY), (0, 0, 1, 0), (3, 3, 0, 0)],
)  # fmt: skip
def test_report_request_rules(fw: SnpFirmware, vmpck: int, vmpl: int, flags: int, status: int) -> None:
    rsp = Guest(fw).report(vmpl=vmpl, vmpck=vmpck, flags=flags)
    assert rsp.status == status
    assert (rsp.report_size == 0x4A0) == (status == 0)


@pytest.mark.slow
def test_report_from_other_chip_fails(fw: SnpFirmware, tmp_path_factory: pytest.TempPathFactory, chain: CertChain) -> None:
    r = bytes(Guest(fw).report().report)
    other = Chip.load_or_create(tmp_path_factory.getbasetemp() / "psp-chip-turin", product="Turin", tcb=TURIN_TCB)
    with pytest.raises(VerificationError):
        verify_report(r, load_chain(chain.ark.public_bytes(_pem()), chain.ask.public_bytes(_pem()), other.chain_pem()[2]))
    with pytest.raises(VerificationError):
        verify_report(r, load_chain(*other.chain_pem()))


def _pem() -> Encoding:
    return Encoding.PEM


def test_extended_request_certificates(fw: SnpFirmware, chain: CertChain) -> None:
    g = Guest(fw)
    page = g.clients[0].request(MsgType.REPORT_REQ, bytes(SNP_REPORT_REQ()))
    with pytest.raises(VmmError) as info:
        fw.ext_guest_request(g.ctx, page, 0)
    assert info.value.vmm_error == VmmError.INVALID_LEN and info.value.pages_needed >= 1
    rsp, certs = fw.ext_guest_request(g.ctx, page, info.value.pages_needed)  # not consumed: same page works
    assert len(certs) % 4096 == 0
    table = parse_cert_table(certs)
    loaded = {k: x509.load_der_x509_certificate(v) for k, v in table.items()}
    assert loaded[VCEK_GUID] == chain.vcek and loaded[ASK_GUID] == chain.ask and loaded[ARK_GUID] == chain.ark
    report = SNP_REPORT_RSP.from_buffer_copy(g.clients[0].response(rsp)).report
    verify_report(bytes(report), CertChain(loaded[ARK_GUID], loaded[ASK_GUID], loaded[VCEK_GUID]))


# -- derived keys ---------------------------------------------------------------------------

ALL = 0x7F


def _k(g: Guest, **f: int) -> bytes:
    rsp = g.key(**f)
    assert rsp.status == 0
    return bytes(rsp.derived_key)


def test_key_fields_from_the_launch(fw: SnpFirmware) -> None:
    base = dict(image_id=b"i" * 16, family_id=b"f" * 16, guest_svn=5)
    a = Guest(fw, **base)
    variants = {
        1: Guest(fw, policy=0x30000 | (1 << 19), **base),  # POLICY differs (DEBUG)
        2: Guest(fw, **{**base, "image_id": b"I" * 16}),
        4: Guest(fw, **{**base, "family_id": b"F" * 16}),
        8: Guest(fw, vcpus=2, **base),  # MEASUREMENT differs
    }
    assert _k(a) == _k(Guest(fw, **base))  # same everything: same key (VCEK root is per chip)
    for bit, b in variants.items():
        assert _k(a, guest_field_select=bit) != _k(b, guest_field_select=bit), bit
        assert _k(a, guest_field_select=ALL & ~bit) == _k(b, guest_field_select=ALL & ~bit), bit


def test_key_fields_from_the_request(fw: SnpFirmware, chip: Chip) -> None:
    g = Guest(fw, guest_svn=5)
    tcb = chip.raw_tcb
    for bit, name, v1, v2 in ((16, "guest_svn", 5, 4), (32, "tcb_version", tcb, 0), (64, "launch_mit_vector", 1, 2)):
        assert _k(g, guest_field_select=bit, **{name: v1}) != _k(g, guest_field_select=bit, **{name: v2}), name
        assert _k(g, guest_field_select=ALL & ~bit, **{name: v1}) == _k(g, guest_field_select=ALL & ~bit, **{name: v2})
    assert _k(g, vmpl=0) != _k(g, vmpl=1)  # VMPL is always mixed in
    assert _k(g, root_key_select=0) != _k(g, root_key_select=1)  # VCEK root vs VMRK
    assert len(_k(g)) == 32 and any(_k(g))


@pytest.mark.parametrize(
    ("vmpck", "fields", "short"),
    [(1, {"vmpl": 0}, False), (0, {"vmpl": 4}, False), (0, {"guest_svn": 6}, False),
     (0, {"guest_field_select": 1 << 7}, False), (0, {"root_key_select": 2}, False), (0, {"reserved": 1}, False),
     (0, {"tcb_version": 0xFF << 56}, False), (0, {"tcb_version": 1 << 16}, False),
     (0, {"guest_field_select": 64}, True)],
)  # fmt: skip
def test_key_request_rules(fw: SnpFirmware, vmpck: int, fields: dict[str, int], short: bool) -> None:
    g = Guest(fw, guest_svn=5)
    assert g.key(vmpck, short=short, **fields).status == FwError.INVALID_PARAM
    assert bytes(g.key(vmpck, short=short, **fields).derived_key) == bytes(32)


def test_statistics(fw: SnpFirmware) -> None:
    g = Guest(fw)
    g.report()
    g.key()
    s = fw.statistics()
    assert (s.guests, s.reports, s.derived_keys, s.requests_refused) == (1, 1, 1, 0)
    assert s.pages_measured == calc_pages()


def calc_pages() -> int:
    return sum(u.size // 4096 for u in launch_plan(IMAGE, vcpus=1, vcpu_sig=1))


# -- fuzzing the firmware's untrusted inputs -------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_guest(chip: Chip) -> Guest:
    return Guest(SnpFirmware(chip), guest_svn=2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([MsgType.REPORT_REQ, MsgType.KEY_REQ]), st.binary(max_size=120))
def test_fuzz_request_payloads(fuzz_guest: Guest, msg_type: MsgType, payload: bytes) -> None:
    """Any authenticated payload gets a well-formed response with a known status."""
    rsp = fuzz_guest.ask(0, msg_type, payload)
    status = int.from_bytes(rsp[:4], "little")
    assert status in (0, FwError.INVALID_PARAM, FwError.INVALID_KEY)
    assert len(rsp) == (0x4C0 if msg_type is MsgType.REPORT_REQ else 64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=4096))
def test_fuzz_raw_request_pages(fuzz_guest: Guest, page: bytes) -> None:
    """Unauthenticated garbage is refused with a firmware error and never advances a counter."""
    before = list(fuzz_guest.ctx.seqnos)
    with pytest.raises(PspError):
        fuzz_guest.fw.guest_request(fuzz_guest.ctx, page)
    assert fuzz_guest.ctx.seqnos == before


def test_reported_tcb_older_than_current(chip: Chip) -> None:
    from svsm.sdk.attestation import encode_tcb

    older = encode_tcb(TcbVersion(boot_loader=0, tee=0, snp=2, microcode=20))
    fw = SnpFirmware(chip, reported_tcb=older)
    g = Guest(fw)
    report = bytes(g.report(b"t").report)
    table = parse_cert_table(fw.certificate_table())
    certs = {k: x509.load_der_x509_certificate(v) for k, v in table.items()}
    r = verify_report(report, CertChain(certs[ARK_GUID], certs[ASK_GUID], certs[VCEK_GUID]))
    assert r.reported_tcb == older and r.current_tcb == chip.raw_tcb
    with pytest.raises(VerificationError):  # the current-TCB VCEK did not sign it
        verify_report(report, load_chain(*chip.chain_pem()))
    with pytest.raises(ValueError):
        SnpFirmware(chip, reported_tcb=encode_tcb(TcbVersion(0, 0, 9, 99)))


def test_concurrent_requests_on_all_vmpcks(fw: SnpFirmware) -> None:
    import threading

    g = Guest(fw)
    errors: list[BaseException] = []

    def worker(vmpck: int) -> None:
        try:
            for _ in range(5):
                assert g.report(vmpl=vmpck, vmpck=vmpck).status == 0
        except BaseException as exc:  # noqa: BLE001 -- re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and g.ctx.seqnos == [10, 10, 10, 10]


def test_masked_chip_id_and_key(chip: Chip, chain: CertChain) -> None:
    r = verify_report(bytes(Guest(SnpFirmware(chip, mask_chip_id=True)).report().report), chain)
    assert r.chip_id == bytes(64)  # hwID binding is skipped, the signature still checks
    raw = bytes(Guest(SnpFirmware(chip, mask_chip_key=True)).report().report)
    masked = AttestationReport.from_bytes(raw)
    assert masked.mask_chip_key and masked.signing_key == 7 and (masked.signature_r, masked.signature_s) == (0, 0)
    with pytest.raises(VerificationError):
        verify_report(raw, chain)
