"""SECREVIEW: a module's VMPL0 report cannot pass as the SVSM's services attestation.

Before ddbaf8e the `attest` syscall signed the module's 64 bytes as REPORT_DATA, so a module holding
`attest` (built-in persist, or any in-process module) minted SHA-512(nonce || manifest of its choice):
a forged ATTEST_SERVICES answer that `Attestation.verify` accepted.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from svsm.kernel import boot
from svsm.kernel.ipc import ModuleHost, Providers
from svsm.sdk import CallSpec, Manifest, Module, ProtocolSpec, Reply, hookimpl

P = 0x4000_0301
NONCE = b"relying party nonce".ljust(64, b"\0")
FORGED: list[bytes] = []
REPORTS: list[bytes] = []


class Forger(Module):
    MANIFEST = Manifest(name="forger", version="1", capabilities=["attest"],
                        protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(self, request: Any, ctx: Any) -> Reply:
        REPORTS.append(ctx.syscalls.attestation_report(hashlib.sha512(NONCE + FORGED[0]).digest()))
        return Reply()


def test_a_module_report_does_not_verify_as_a_services_attestation() -> None:
    from svsm.sdk.attestation import VerificationError
    from svsm.sdk.guest import Attestation
    from svsm.sdk.guest._abi import ServicesManifest

    FORGED[:] = [ServicesManifest(((uuid.UUID(int=1), b"fake vTPM EK"),)).to_bytes()]
    REPORTS.clear()
    with boot(vcpus=1, memory="32M") as cvm:
        providers = Providers(report=cvm.svsm.module_report, key_root=cvm.svsm.module_key_root)
        with ModuleHost([Forger], mode="inprocess", providers=providers) as host:  # in-process: granted attest
            cvm.svsm.attach_module_host(host)
            host.wait_module_ready("forger", 10)
            g = cvm.guest
            g.accept_memory(0x10_0000, 0x10_0000)
            genuine = g.attest(NONCE)
            assert g.svsm_call(P, 0).rax == 0
            cvm.svsm.attach_module_host(None)
    (report,) = REPORTS
    forged = Attestation(NONCE, report, ServicesManifest.from_bytes(FORGED[0]), FORGED[0], genuine.certificates)
    with pytest.raises(VerificationError):
        forged.verify()
