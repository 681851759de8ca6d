"""A booted CVM whose guest reaches ring-3 modules through the SVSM (KCORE dispatch -> ModuleHost)."""

from __future__ import annotations

import hashlib
import pathlib
import sys
from typing import Any

import pytest

from svsm.kernel.ipc import MODULE_MEASUREMENTS_GUID, decode_measurements
from svsm.sdk import ResultCode

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "echo-module"


@pytest.fixture(scope="module")
def echo() -> Any:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import svsm_echo

        yield svsm_echo
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inprocess", "process"])
def test_guest_calls_vendor_protocol(svsm_vm: Any, echo: Any, mode: str) -> None:
    cvm = svsm_vm(echo.EchoModule, mode=mode, vcpus=1, memory="16M")
    g = cvm.guest
    assert g.query_protocol(echo.ECHO_PROTOCOL) == (1, 1)
    out = g.svsm_call(echo.ECHO_PROTOCOL, echo.CALL_ECHO, rcx=0x1234)
    assert (out.rax, out.rcx, out.rdx) == (0, 0x1234, 1)
    assert g.svsm_call(echo.ECHO_PROTOCOL, 7).rax == ResultCode.UNSUPPORTED_CALL
    gpa = g.pool.take()
    g.mem.write(gpa, b"guest bytes")
    assert g.svsm_call(echo.ECHO_PROTOCOL, echo.CALL_REVERSE, rcx=gpa, rdx=11).rax == 0
    assert g.mem.read(gpa, 11) == b"guest bytes"[::-1]
    out = g.svsm_call(echo.ECHO_PROTOCOL, echo.CALL_DIGEST, rcx=gpa, rdx=11)
    assert out.rax == 0
    assert out.rcx.to_bytes(8, "little") == hashlib.sha256(b"guest bytes"[::-1]).digest()[:8]
    # a buffer outside guest memory is the guest's error, not the module's
    assert g.svsm_call(echo.ECHO_PROTOCOL, echo.CALL_REVERSE, rcx=1 << 40, rdx=8).rax == ResultCode.INVALID_ADDRESS
    assert cvm.module_host.module("echo").statistics().failures == 0
    entries = dict(cvm.module_host.service_manifests())
    (m,) = decode_measurements(entries[MODULE_MEASUREMENTS_GUID])
    assert m.name == "echo"


@pytest.mark.slow
def test_attested_services_manifest_names_the_measured_modules(svsm_vm: Any, echo: Any) -> None:
    from svsm.kernel.ipc import measure_object

    cvm = svsm_vm(echo.EchoModule, mode="inprocess", vcpus=1, memory="16M")
    cvm.guest.accept_memory(0x100000, 0x100000)
    att = cvm.guest.attest(b"\x42" * 64)
    att.verify()  # REPORT_DATA binds the manifest, the VCEK chain signs the report
    services = dict(att.manifest.services)
    (entry,) = decode_measurements(services[MODULE_MEASUREMENTS_GUID])
    assert (entry.name, entry.version) == ("echo", "1.0.0")
    assert entry.measurement == measure_object(echo.EchoModule)
