"""``check_module()``: the conformance suite any module can run (trio's ``check_two_way_stream``)."""

from __future__ import annotations

from typing import Any, NamedTuple

from svsm.sdk import ResultCode, load_manifest

from ._memory import FakeGuestMemory

__all__ = ["ConformanceReport", "check_module"]

_VALID = {int(c) for c in ResultCode}


class ConformanceReport(NamedTuple):
    """What :func:`check_module` exercised."""

    name: str
    calls_checked: int
    state_round_trip: bool
    service_manifest: bool


def _valid_code(code: int) -> bool:
    return code in _VALID or ResultCode.PROTOCOL_BASE <= code < ResultCode.PROTOCOL_BASE + 0x1000


def check_module(obj: Any, *, mode: str = "inprocess", buffer_gpa: int = 0x1000) -> ConformanceReport:
    """Run module object ``obj`` through the kernel's contract and raise on the first breach.

    Checks: the manifest is valid and every hookimpl names a known hook; the module
    starts; every declared call, given zero registers and a zero buffer at
    ``buffer_gpa``, answers with success or an SVSM result code without crashing,
    hanging or misbehaving; an undeclared call is UNSUPPORTED_CALL; QUERY_PROTOCOL's
    versions match; ``svsm_save_state`` output is accepted by ``svsm_restore_state``;
    a declared service GUID yields manifest bytes; the module stops cleanly.

    :param mode: ``"inprocess"`` (fast) or ``"process"`` (sandboxed, as in production).
    :raises AssertionError: the module breaks the contract (the message says where).
    """
    from svsm.kernel.ipc import ModuleHost  # lazily: svsm.sdk never imports the kernel at import time

    manifest = load_manifest(obj)
    checked = 0
    with ModuleHost([obj], mode=mode) as host:
        sup = host.module(manifest.name)
        assert sup.state.value == "serving", f"module did not start: {sup.last_failure}"
        for proto in manifest.protocols:
            assert host.protocol_versions(proto.number) == (proto.min_version, proto.max_version)
            for cs in proto.calls:
                regs = {"rcx": 0, "rdx": 0, "r8": 0, "r9": 0}
                if cs.buffer is not None:
                    regs[cs.buffer.gpa_register] = buffer_gpa
                    if cs.buffer.size_register is not None:
                        regs[cs.buffer.size_register] = min(cs.buffer.max_size, 4096)
                out = host.call(proto.number, cs.call, memory=FakeGuestMemory(), **regs)
                assert _valid_code(out.rax), f"call {proto.number:#x}/{cs.call}: RAX {out.rax:#x} is not a result code"
                assert out.rax != ResultCode.BUSY or sup.statistics().failures == 0, (
                    f"call {proto.number:#x}/{cs.call} crashed or hung the module: {sup.last_failure}"
                )
                assert sup.statistics().failures == 0, f"call {proto.number:#x}/{cs.call}: {sup.last_failure}"
                assert sup.statistics().strikes == 0, f"call {proto.number:#x}/{cs.call} sent invalid frames"
                checked += 1
            undeclared = max((c.call for c in proto.calls), default=-1) + 1
            out = host.call(proto.number, undeclared)
            assert out.rax == ResultCode.UNSUPPORTED_CALL, "undeclared call was not UNSUPPORTED_CALL"
        state = host.save_state(manifest.name)
        round_trip = state is not None
        if state is not None:
            host.restore_state(manifest.name, state)
        has_manifest = False
        if manifest.service_guid is not None:
            assert sup.service_manifest() is not None, "service_guid declared but svsm_service_manifest returned None"
            has_manifest = True
        assert sup.statistics().failures == 0, f"module failed: {sup.last_failure}"
    assert sup.state.value == "dead" and not sup.last_failure, f"module did not stop cleanly: {sup.last_failure}"
    return ConformanceReport(manifest.name, checked, round_trip, has_manifest)
