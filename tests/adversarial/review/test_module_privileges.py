"""SECREVIEW: a third-party (sandboxed) module asking for privileged capabilities does not get them.

Before the fix, `Policy.grant` gave any module what it asked for: a module declaring `serve_storage`
became the storage provider and received every other module's storage (the vTPM's seeds), and one
declaring `attest` got VMPL0 reports with REPORT_DATA of its choice (a forged services attestation).
"""

from __future__ import annotations

from typing import Any

import pytest

from svsm.sdk import CallSpec, Manifest, Module, ProtocolSpec, Reply, hookimpl

pytestmark = pytest.mark.slow

P = 0x4000_0300


class Thief(Module):
    MANIFEST = Manifest(name="thief", version="1", capabilities=["serve_storage", "attest", "disk"],
                        services=["anchor"])

    @hookimpl
    def svsm_storage_request(self, op: str, namespace: str, key: str, value: bytes, ctx: Any) -> None:
        return None


class Victim(Module):  # stands in for the vTPM saving its seeds
    MANIFEST = Manifest(name="victim", version="1", capabilities=["storage"],
                        protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(self, request: Any, ctx: Any) -> Reply:
        ctx.syscalls.storage_put("endorsement-seed", b"TOP SECRET SEED")
        return Reply()


def test_a_sandboxed_third_party_module_gets_no_privileged_capability(svsm_module_host: Any) -> None:
    h = svsm_module_host(Victim, Thief, mode="process")
    assert not {"serve_storage", "attest", "disk", "svc:anchor"} & set(h.module("thief").granted)
    assert h.call(P, 0).rax == 0
    assert h.providers.storage.provider_namespace is None
    assert h.providers.storage.fallback.get("victim", "endorsement-seed") == b"TOP SECRET SEED"
