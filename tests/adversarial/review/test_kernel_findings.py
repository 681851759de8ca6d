"""SECREVIEW: guest and host attacks on the SVSM kernel that used to work (see docs/dev/requests.md)."""

from __future__ import annotations

import tempfile
import threading

import pytest

from svsm.kernel import boot
from svsm.kernel.hw import VMSA, PageStateChangeRequest, SwExitCode
from svsm.kernel.hw.adversary import AdversarialHypervisor


def test_two_boots_get_different_vmpcks_and_the_host_cannot_read_key_responses() -> None:
    """boot() used seed=0: every CVM had the same VMPCKs, so the host decrypted MSG_KEY_RSP."""
    from svsm.sdk.attestation import GuestMessageError, open_message

    with boot(vcpus=1, memory="32M", psp_state_dir=tempfile.mkdtemp()) as shadow:  # the host's dry run
        predicted = bytes(shadow.svsm.secrets.vmpck(0))
    hv, seen = AdversarialHypervisor(), []
    hv.tamper_response = lambda page: (seen.append(page), page)[1]
    with boot(vcpus=1, memory="32M", hypervisor=hv, psp_state_dir=tempfile.mkdtemp()) as victim:
        assert bytes(victim.svsm.secrets.vmpck(0)) != predicted
        assert seen  # the SVSM's key response (module_key_root) is among them
        for page in seen:
            with pytest.raises(GuestMessageError):
                open_message(predicted, page)


def test_a_guest_that_makes_its_calling_area_shared_does_not_panic_the_svsm() -> None:
    from svsm.sdk.guest._guest import request_rax

    with boot(vcpus=1, memory="32M") as cvm:
        g = cvm.guest
        g._msr(PageStateChangeRequest(g.caa >> 12, 2).encode())  # CAA page -> shared (host honest)
        g.mem.write(g.caa, b"\x01", c_bit=False)
        g.regs.set_many(("rax", "rcx", "rdx", "r8", "r9"), (request_rax(0, 8), 0, 0, 0, 0))
        g._run_vmpl0()
        assert cvm.svsm.panicker.panicked is None
        cvm.shutdown(check_leaks=False)


def test_services_attestation_from_a_guest_vmpl_does_not_verify(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The guest OS asks the PSP itself (VMPCK2) with REPORT_DATA = SHA-512(nonce || its own manifest)."""
    import hashlib
    import uuid

    from cryptography import x509

    from svsm.kernel.hw.psp import Chip, SnpFirmware
    from svsm.sdk.attestation import ARK_GUID, ASK_GUID, VCEK_GUID, VerificationError
    from svsm.sdk.guest import Attestation
    from svsm.sdk.guest._abi import ServicesManifest

    chip = Chip.load_or_create(tmp_path / "chip")
    fw = SnpFirmware(chip)
    ctx = fw.launch_start()
    fw.launch_update_normal(ctx, 0x1000, bytes(4096))
    fw.launch_finish(ctx)
    nonce = b"n" * 64
    forged = ServicesManifest(((uuid.UUID(int=1), b"the guest OS's own EK"),)).to_bytes()
    report = fw.build_report(ctx, hashlib.sha512(nonce + forged).digest(), 2)
    ark, ask, vcek = chip.chain_der()
    att = Attestation(nonce, report, ServicesManifest.from_bytes(forged), forged,
                      {ARK_GUID: ark, ASK_GUID: ask, VCEK_GUID: vcek})
    with pytest.raises(VerificationError):
        att.verify(trusted_arks=[x509.load_der_x509_certificate(ark)])
