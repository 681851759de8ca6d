"""A booted CVM whose guest reaches ring-3 modules through the SVSM (KCORE dispatch -> ModuleHost)."""

from __future__ import annotations

import hashlib
import pathlib
import sys
from typing import Any

import pytest

from svsm.kernel.ipc import MODULE_MEASUREMENTS_GUID, decode_measurements
from svsm.sdk import CallSpec, Manifest, Module, ProtocolSpec, Reply, ResultCode, hookimpl

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


class Crashy(Module):
    """Call 0 works; call 1 kills the module (a module defined in the test file)."""

    MANIFEST = Manifest(
        name="crashy", version="1", protocols=[ProtocolSpec(number=0x4000_0300, calls=[CallSpec(call=0), CallSpec(call=1)])]
    )

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        if request.call == 1:
            raise SystemExit
        return Reply(rcx=1)


@pytest.mark.slow
def test_guest_sees_busy_then_the_protocol_disappears_after_a_crash_loop(svsm_vm: Any) -> None:
    from svsm.kernel.ipc import Limits

    cvm = svsm_vm(Crashy, host_kwargs={"limits": Limits(backoff_base=0.001, crash_loop=3)}, vcpus=1, memory="16M")
    g, host = cvm.guest, cvm.module_host
    assert g.query_protocol(0x4000_0300) == (1, 1)
    for _ in range(3):
        host.wait_module_ready("crashy", 10)
        assert g.svsm_call(0x4000_0300, 1, max_retries=0).rax == ResultCode.BUSY
    assert host.module("crashy").state.value == "dead"
    assert g.query_protocol(0x4000_0300) is None  # QUERY_PROTOCOL no longer reports it
    assert g.svsm_call(0x4000_0300, 0).rax == ResultCode.UNSUPPORTED_PROTOCOL


@pytest.mark.slow
def test_conformance_suite_in_a_sandboxed_process(echo: Any) -> None:
    from svsm.sdk.testing import check_module

    report = check_module(echo.EchoModule, mode="process")
    assert (report.name, report.calls_checked, report.state_round_trip) == ("echo", 3, True)
