"""svsm-echo: the ECHO vendor protocol (0x4000_0001) as a ring-3 pysvsm module.

Imports ``svsm.sdk`` only, like any third-party module.
"""

from __future__ import annotations

import hashlib

from svsm.sdk import BufferSpec, CallSpec, Manifest, Module, ProtocolSpec, Reply, hookimpl

__all__ = ["ECHO_PROTOCOL", "EchoModule", "CALL_ECHO", "CALL_REVERSE", "CALL_DIGEST"]

#: The vendor protocol number (docs/modules.md: >= 0x4000_0000 are vendors').
ECHO_PROTOCOL = 0x4000_0001
CALL_ECHO, CALL_REVERSE, CALL_DIGEST = 0, 1, 2


class EchoModule(Module):
    """Echo values, reverse a guest buffer, hash a granted guest buffer."""

    MANIFEST = Manifest(
        name="echo",
        version="1.0.0",
        description="example vendor module",
        protocols=[
            ProtocolSpec(
                number=ECHO_PROTOCOL,
                calls=[
                    CallSpec(call=CALL_ECHO),
                    CallSpec(
                        call=CALL_REVERSE,
                        buffer=BufferSpec(gpa_register="rcx", size_register="rdx", max_size=4096, writable=True),
                    ),
                    CallSpec(
                        call=CALL_DIGEST,
                        buffer=BufferSpec(gpa_register="rcx", size_register="rdx", max_size=65536, mode="grant"),
                    ),
                ],
            )
        ],
        capabilities=["log", "storage", "grant"],
    )

    @hookimpl
    def svsm_module_start(self, ctx):
        self.served = int(ctx.syscalls.storage_get("served") or b"0")
        ctx.log.info("echo module started (%d calls served before)", self.served)

    @hookimpl
    def svsm_handle_request(self, request, ctx):
        self.served += 1
        ctx.syscalls.storage_put("served", str(self.served).encode())
        if request.call == CALL_ECHO:
            return Reply(rcx=request.rcx, rdx=self.served)
        if request.call == CALL_REVERSE:
            return Reply(buffer=request.buffer[::-1])
        digest = hashlib.sha256(request.grant.read()).digest()
        request.grant.unmap()
        return Reply(
            rcx=int.from_bytes(digest[0:8], "little"),
            rdx=int.from_bytes(digest[8:16], "little"),
            r8=int.from_bytes(digest[16:24], "little"),
        )

    @hookimpl
    def svsm_save_state(self):
        return str(self.served).encode()

    @hookimpl
    def svsm_restore_state(self, state):
        self.served = int(state)
