"""The PSP attached to a kernel/hw Platform: launch into guest memory, guest requests over the GHCB."""

from __future__ import annotations

import ctypes

import pytest

from svsm.kernel.hw import PAGE_SIZE, Platform, RegisterGhcbRequest, RegisterGhcbResponse, SwExitCode
from svsm.kernel.hw.psp import (
    Chip,
    FirmwareImage,
    PlatformPsp,
    PspError,
    SectionType,
    SnpFirmware,
    build_image,
    calc_launch_digest,
    launch_plan,
)
from svsm.kernel.hw.testing import ghcb_call, msr_call
from svsm.sdk.attestation import (
    SNP_REPORT_REQ,
    SNP_REPORT_RSP,
    SNP_SECRETS_PAGE,
    GuestMessageClient,
    MsgType,
    load_chain,
    parse_cert_table,
    verify_report,
)

SECRETS_GPA = 0x802000
IMAGE = FirmwareImage.parse(build_image(0x4000, reset_eip=0xFFFFF004, sections=[
    (0x800000, 0x2000, SectionType.SNP_SEC_MEM), (SECRETS_GPA, 0x1000, SectionType.SNP_SECRETS),
    (0x803000, 0x1000, SectionType.CPUID)]))  # fmt: skip
GHCB, REQ, RSP, CERTS = 0x10000, 0x11000, 0x12000, 0x20000


@pytest.fixture(scope="session")
def chip(tmp_path_factory: pytest.TempPathFactory) -> Chip:
    return Chip.load_or_create(tmp_path_factory.getbasetemp() / "psp-chip")


@pytest.fixture
def machine(chip: Chip) -> tuple[Platform, PlatformPsp]:
    p = Platform(memory_size=5 << 30, vcpu_count=2)
    psp = PlatformPsp(SnpFirmware(chip), p)
    p.psp = psp
    psp.launch(launch_plan(IMAGE, vcpus=2, vcpu_sig=0xA00F11, guest_features=0x1))
    return p, psp


def test_launch_places_pages(machine: tuple[Platform, PlatformPsp]) -> None:
    p, psp = machine
    assert psp.result is not None
    assert psp.result.measurement == calc_launch_digest(IMAGE, vcpus=2, vcpu_sig=0xA00F11)
    view = p.vcpus[0].view(0)
    # firmware bytes readable by the guest, ciphertext for the host
    assert view.read(IMAGE.gpa, 64) == IMAGE.data[:64]
    assert p.host.read(IMAGE.gpa, 64) != IMAGE.data[:64]
    secrets = SNP_SECRETS_PAGE.from_buffer_copy(view.read(SECRETS_GPA, PAGE_SIZE))
    assert secrets.vmpck(0) == psp.ctx.vmpcks[0]  # type: ignore[union-attr]
    assert secrets.vmpck(0) not in p.host.read(SECRETS_GPA, PAGE_SIZE)
    entry = p.firmware.rmp_entry(SECRETS_GPA)
    assert entry.assigned and entry.validated
    for vcpu, rip in ((p.vcpus[0], 0xFFF0), (p.vcpus[1], 0xF004)):
        assert vcpu.vmsa_sfn[0] is not None
        vmsa = vcpu.vmsa(0)
        assert vmsa.rip == rip and vmsa.sev_features == 1 and vmsa.rdx == 0xA00F11
        assert p.rmp.read(vcpu.vmsa_sfn[0]).vmsa


def test_guest_request_over_ghcb(machine: tuple[Platform, PlatformPsp], chip: Chip) -> None:
    p, psp = machine
    bsp = p.vcpus[0]
    bsp.vmrun(0)
    assert msr_call(bsp, RegisterGhcbRequest(GHCB // PAGE_SIZE)) == RegisterGhcbResponse(GHCB // PAGE_SIZE)
    view = bsp.view(0)
    secrets = SNP_SECRETS_PAGE.from_buffer_copy(view.read(SECRETS_GPA, PAGE_SIZE))
    client = GuestMessageClient(secrets.vmpck(0), 0)
    req = SNP_REPORT_REQ()
    ctypes.memmove(req.report_data, b"N" * 64, 64)
    page = client.request(MsgType.REPORT_REQ, bytes(req))
    view.write(REQ, page, c_bit=False)
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_EXT_GUEST_REQUEST, REQ, RSP, rax=CERTS, rbx=4)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (0, 0)
    rsp = SNP_REPORT_RSP.from_buffer_copy(client.response(view.read(RSP, PAGE_SIZE, c_bit=False)))
    assert rsp.status == 0
    report = verify_report(bytes(rsp.report), load_chain(*chip.chain_pem()))
    assert report.measurement == psp.result.measurement and report.report_data == b"N" * 64  # type: ignore[union-attr]
    assert len(parse_cert_table(view.read(CERTS, 4 * PAGE_SIZE, c_bit=False))) == 3
    # a replay of the same request page is refused with the firmware's status
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_GUEST_REQUEST, REQ, RSP)
    assert (out.sw_exit_info_1, out.sw_exit_info_2) == (0, 0x16)


def test_guest_request_without_launch(chip: Chip) -> None:
    p = Platform(memory_size=1 << 20)
    with pytest.raises(PspError):
        PlatformPsp(SnpFirmware(chip), p).guest_request(bytes(PAGE_SIZE))


def _adversarial_machine(chip: Chip):  # type: ignore[no-untyped-def]
    from svsm.kernel.hw.adversary import AdversarialHypervisor

    hv = AdversarialHypervisor()
    p = Platform(memory_size=5 << 30, vcpu_count=1, hypervisor=hv)
    psp = PlatformPsp(SnpFirmware(chip), p)
    p.psp = psp
    psp.launch(launch_plan(IMAGE, vcpus=1, vcpu_sig=0xA00F11))
    bsp = p.vcpus[0]
    bsp.vmrun(0)
    msr_call(bsp, RegisterGhcbRequest(GHCB // PAGE_SIZE))
    view = bsp.view(0)
    client = GuestMessageClient(SNP_SECRETS_PAGE.from_buffer_copy(view.read(SECRETS_GPA, PAGE_SIZE)).vmpck(0), 0)
    return p, hv, bsp, view, client


def _ask(bsp, view, client) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    view.write(REQ, client.request(MsgType.REPORT_REQ, bytes(SNP_REPORT_REQ())), c_bit=False)
    out = ghcb_call(bsp, GHCB, SwExitCode.SNP_GUEST_REQUEST, REQ, RSP)
    return out.sw_exit_info_2, view.read(RSP, PAGE_SIZE, c_bit=False)


def test_hostile_hypervisor_tampering_is_detected(chip: Chip) -> None:
    from svsm.sdk.attestation import GuestMessageError

    p, hv, bsp, view, client = _adversarial_machine(chip)
    hv.tamper_response = lambda page: page[:0x70] + bytes([page[0x70] ^ 1]) + page[0x71:]
    status, page = _ask(bsp, view, client)
    assert status == 0
    with pytest.raises(GuestMessageError):
        client.response(page)  # the guest refuses the altered response ...
    assert not client.usable  # ... and drops the key rather than reuse an IV


def test_hostile_hypervisor_replay_is_refused(chip: Chip) -> None:
    p, hv, bsp, view, client = _adversarial_machine(chip)
    status, page = _ask(bsp, view, client)
    assert status == 0 and SNP_REPORT_RSP.from_buffer_copy(client.response(page)).status == 0
    hv.replay_guest_requests = True  # forwards the first request again instead of the new one
    status, _ = _ask(bsp, view, client)
    assert status == 0x16  # the PSP refuses the stale sequence number
