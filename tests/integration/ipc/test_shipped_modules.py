"""The shipped tpm module through the same path as third-party code: entry point, sandbox, guest call."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest

from svsm.kernel.ipc import MODULE_MEASUREMENTS_GUID, ModuleHost, discover

pytestmark = pytest.mark.slow

VTPM_PROTOCOL, VTPM_QUERY, VTPM_CMD = 2, 0, 1
VTPM_GUID = uuid.UUID("c476f1eb-0123-45a5-9641-b4e7dde5bfe3")  # coconut-svsm.md 2.4
TPM2_STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")


@pytest.fixture
def tpm_spec() -> Any:
    found, skipped = discover(blocked=["persist", "migrate"])
    specs = [s for s in found if s.name == "tpm"]
    if not specs:
        pytest.skip(f"tpm module not installed or not loadable: {skipped.get('tpm')}")
    return specs[0]


def test_vtpm_served_from_a_sandboxed_process(tpm_spec: Any) -> None:
    from svsm.kernel import boot

    with ModuleHost([tpm_spec], mode="process") as host:
        assert "seccomp" in host.module("tpm").protections
        with boot(module_host=host, vcpus=1, memory="16M") as cvm:
            g = cvm.guest
            assert g.query_protocol(VTPM_PROTOCOL) == (1, 1)
            q = g.svsm_call(VTPM_PROTOCOL, VTPM_QUERY)
            assert (q.rax, q.rcx & 0x100) == (0, 0x100)
            gpa = g.pool.take()
            page = struct.pack("<IBI", 8, 0, len(TPM2_STARTUP_CLEAR)) + TPM2_STARTUP_CLEAR
            g.mem.write(gpa, page.ljust(4096, b"\0"))
            assert g.svsm_call(VTPM_PROTOCOL, VTPM_CMD, rcx=gpa).rax == 0
            (outsize,) = struct.unpack("<I", g.mem.read(gpa, 4))  # SVSM vTPM response: u32 size, then TPM bytes
            tag, rsize, rc = struct.unpack(">HII", g.mem.read(gpa + 4, 10))
            assert (outsize, tag, rsize, rc) == (10, 0x8001, 10, 0)  # TPM_ST_NO_SESSIONS, TPM_RC_SUCCESS
            g.accept_memory(0x100000, 0x100000)
            att = g.attest(b"\x07" * 64)
            att.verify()
            guids = [guid for guid, _ in att.manifest.services]
            assert VTPM_GUID in guids and MODULE_MEASUREMENTS_GUID in guids
