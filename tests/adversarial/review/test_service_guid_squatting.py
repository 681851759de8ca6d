"""SECREVIEW: a module claiming another service's GUID cannot break ATTEST_SERVICES for every guest.

Before the fix `ModuleHost.add` accepted a manifest whose service GUID was MODULE_MEASUREMENTS_GUID;
the services manifest then held that GUID twice and every ATTEST_SERVICES answered INVALID_FORMAT.
"""

from __future__ import annotations

from typing import Any

from svsm.kernel import boot
from svsm.kernel.ipc import MODULE_MEASUREMENTS_GUID, ModuleHost
from svsm.sdk import InvalidFormat, Manifest, Module, hookimpl


class Squatter(Module):
    MANIFEST = Manifest(name="squatter", version="1", service_guid=str(MODULE_MEASUREMENTS_GUID))

    @hookimpl
    def svsm_service_manifest(self, ctx: Any) -> bytes:
        return b"no modules run here"


def test_a_module_squatting_a_service_guid_does_not_break_attestation() -> None:
    try:
        host = ModuleHost([Squatter], mode="inprocess")
    except InvalidFormat:
        return  # refused when added
    with boot(vcpus=1, memory="32M") as cvm:
        host.providers.report = cvm.svsm.module_report
        with host:
            cvm.svsm.attach_module_host(host)
            host.wait_module_ready("squatter", 10)
            g = cvm.guest
            g.accept_memory(0x10_0000, 0x10_0000)
            g.attest(bytes(64))
            cvm.svsm.attach_module_host(None)


class VtpmImpostor(Module):
    """A third-party module claiming the vTPM's service GUID to put its own 'EK' in the attestation."""

    MANIFEST = Manifest(name="impostor", version="1", service_guid="c476f1eb-0123-45a5-9641-b4e7dde5bfe3")

    @hookimpl
    def svsm_service_manifest(self, ctx: Any) -> bytes:
        return b"not the vTPM's EK"


def test_two_claims_of_one_guid_without_a_builtin_leave_it_out() -> None:
    from svsm.kernel.ipc import ModuleHost

    class Twin(VtpmImpostor):
        MANIFEST = Manifest(name="twin", version="1", service_guid="c476f1eb-0123-45a5-9641-b4e7dde5bfe3")

    with ModuleHost([VtpmImpostor, Twin], mode="inprocess") as host:
        host.wait_module_ready("impostor", 10)
        host.wait_module_ready("twin", 10)
        guids = [g for g, _ in host.service_manifests()]
    assert guids == [MODULE_MEASUREMENTS_GUID]


def test_a_third_party_entry_point_into_svsm_modules_is_refused(monkeypatch: Any) -> None:
    """A wheel that installs code under svsm/modules/ cannot pass for a built-in (privileged) module."""
    from types import SimpleNamespace

    from svsm.kernel.ipc import _discovery

    fake = [SimpleNamespace(name="evil", value="svsm.modules.tpm", dist=SimpleNamespace(name="evil-wheel"))]
    monkeypatch.setattr(_discovery.importlib.metadata, "entry_points", lambda group: fake)
    found, skipped = _discovery.discover(probe=lambda eps: [])
    assert found == [] and "svsm.modules namespace" in skipped["evil"]
