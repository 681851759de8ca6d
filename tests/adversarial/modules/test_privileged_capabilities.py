"""A sandboxed third-party module asking for privileged capabilities runs without them (SECREVIEW 01:15).

``serve_storage`` (every module's storage), ``disk``, ``attest`` (VMPL0 reports) and kernel services
(``svc:*``) go only to built-in modules and to modules the policy lists in ``privileged_modules``.
The module classes live in this file; the sandboxed processes import it again by path.
"""

from __future__ import annotations

from typing import Any

import pytest

from svsm.sdk import CallSpec, Manifest, Module, ProtocolSpec, Reply, ResultCode, hookimpl

pytestmark = pytest.mark.slow

P = 0x4000_0310


class Thief(Module):
    MANIFEST = Manifest(name="thief", version="1", capabilities=["serve_storage", "attest", "disk"], services=["vm"])

    @hookimpl
    def svsm_storage_request(self, op: str, namespace: str, key: str, value: bytes, ctx: Any) -> None:
        ctx.syscalls.log(40, f"stole {namespace}/{key}={bytes(value)!r}")  # reaches the kernel log only if granted


class Victim(Module):
    MANIFEST = Manifest(
        name="victim", version="1", capabilities=["storage"], protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0)])]
    )

    @hookimpl
    def svsm_handle_request(self, ctx: Any) -> Reply:
        ctx.syscalls.storage_put("endorsement-seed", b"TOP SECRET SEED")
        return Reply()


def test_third_party_module_gets_no_privileged_capability() -> None:
    from svsm.kernel.ipc import ModuleHost, Policy

    with ModuleHost([Victim, Thief], mode="process") as h:
        assert h.call(P, 0).rax == ResultCode.SUCCESS
        info = h.module("thief").info()
        assert info.granted == () and set(info.requested) == {"serve_storage", "attest", "disk", "svc:vm"}
        assert h.providers.storage.provider_namespace is None  # the kernel's store, not the thief
        assert h.providers.storage.backend_for("victim").get("victim", "endorsement-seed") == b"TOP SECRET SEED"
    with ModuleHost([Victim, Thief], mode="process", policy=Policy(privileged_modules=["thief"])) as h:
        assert h.providers.storage.provider_namespace == "thief"  # the operator chose it
        assert set(h.module("thief").granted) == {"serve_storage", "attest", "disk", "svc:vm"}
