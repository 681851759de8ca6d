"""A hostile hypervisor against the SVSM: what it refuses or forges never reaches the guest as
trusted data, and boot fails closed."""

from __future__ import annotations

from typing import Any

import pytest

from svsm.kernel import boot
from svsm.kernel._requests import GhcbCallError
from svsm.kernel.hw import Hypervisor
from svsm.sdk import ResultCode


class RefusePsc(Hypervisor):
    def page_state_change(self, entry: Any) -> Any:
        return 0xFFFF_FFFF, entry


class NoCerts(Hypervisor):
    """Answers the extended request but leaves an all-zero certificate table."""

    def nae_snp_ext_guest_request(self, vcpu: Any, ghcb: Any) -> None:
        cert_gpa = ghcb.get("rax")
        super().nae_snp_ext_guest_request(vcpu, ghcb)
        self.platform.host.write(cert_gpa, bytes(0x4000))


class ForgedCerts(Hypervisor):
    """Hands out a certificate table whose entry points outside the buffer."""

    def nae_snp_ext_guest_request(self, vcpu: Any, ghcb: Any) -> None:
        cert_gpa = ghcb.get("rax")
        super().nae_snp_ext_guest_request(vcpu, ghcb)
        self.platform.host.write(cert_gpa, b"\x11" * 16 + (0x10_0000).to_bytes(4, "little") + (64).to_bytes(4, "little"))


def test_boot_fails_closed_when_the_host_refuses_page_state_changes() -> None:
    hv = RefusePsc()
    with pytest.raises(GhcbCallError):
        with boot(vcpus=1, memory="12M", hypervisor=hv):
            pass
    ctx = hv.platform.psp.ctx
    assert ctx.state.value == "decommissioned" and not any(ctx.vmpcks[0])


def test_all_zero_certificate_table_reports_no_certificates() -> None:
    with boot(vcpus=1, memory="12M", hypervisor=NoCerts()) as cvm:
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x10_0000)
        att = g.attest(bytes(64))
        assert att.certificates == {}
        assert att.report  # the report itself is still delivered (and signed)


def test_malformed_certificate_table_is_refused() -> None:
    with boot(vcpus=1, memory="12M", hypervisor=ForgedCerts()) as cvm:
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x10_0000)
        r = g.svsm_call(1, 0, 0)  # op at GPA 0 is reserved memory: INVALID_ADDRESS first
        assert r.rax == ResultCode.INVALID_ADDRESS
        from svsm.sdk import RequestError

        with pytest.raises(RequestError) as ei:
            g.attest(bytes(64))
        assert ei.value.code == ResultCode.INVALID_REQUEST
        assert cvm.svsm.panicker.panicked is None


class OldGhcb(Hypervisor):
    def msr_sev_info_request(self, vcpu: Any, msg: Any) -> Any:
        from svsm.kernel.hw import SevInfoResponse

        return SevInfoResponse(1, 1, self.platform.c_bit)  # GHCB protocol 1 only


def test_boot_requires_ghcb_protocol_2() -> None:
    hv = OldGhcb()
    with pytest.raises(GhcbCallError):
        with boot(vcpus=1, memory="12M", hypervisor=hv):
            pass
    assert hv.terminated == (0, 1)  # reason set 0, code 1: GHCB protocol range unsupported


def test_missing_hypervisor_features_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.WARNING, "svsm.kernel.svsm")
    with boot(vcpus=1, memory="12M", hypervisor=Hypervisor(features=0x3)) as cvm:
        assert cvm.svsm.hypervisor_features == 0x3
        assert cvm.guest.query_protocol(0) == (1, 1)
    assert "present=0x3 required=0x23" in caplog.text
