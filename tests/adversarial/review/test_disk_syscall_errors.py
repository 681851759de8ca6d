"""SECREVIEW: a module's disk syscall that the host device refuses is an error code, not a panic.

`BlockDeviceError` is not a `RequestError`; before the fix it escaped the syscall table and the
request loop panicked the SVSM (VMPCKs wiped) when a module granted `disk` read one block past
the end of the host disk during a guest call.
"""

from __future__ import annotations

from typing import Any

import pytest

from svsm.kernel.hw.blockdev import BLOCK_SIZE, BlockDevice, CrashPolicy, DiskAdapter, FaultInjector, MemoryImage
from svsm.sdk import CallSpec, InvalidParameter, InvalidRequest, Manifest, Module, ProtocolSpec, Reply, ResultCode, hookimpl

P = 0x4000_0500


class PastTheEnd(Module):
    MANIFEST = Manifest(name="pasttheend", version="1", capabilities=["disk"],
                        protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0), CallSpec(call=1)])])

    @hookimpl
    def svsm_handle_request(self, request: Any, ctx: Any) -> Reply:
        size = ctx.syscalls.disk_size()
        if request.call == 0:
            ctx.syscalls.disk_read(size, BLOCK_SIZE)
        else:
            ctx.syscalls.disk_write(size - BLOCK_SIZE, bytes(2 * BLOCK_SIZE))
        return Reply()


def test_out_of_range_disk_syscalls_during_a_guest_call_do_not_panic() -> None:
    from svsm.kernel import boot
    from svsm.kernel.ipc import ModuleHost, Policy, Providers

    # `disk` is a privileged capability: grant it to this test module where the policy can say so
    privileged = {"privileged_modules": ["pasttheend"]} if "privileged_modules" in Policy.__struct_fields__ else {}
    with boot(vcpus=1, memory="32M") as cvm:
        providers = Providers(report=cvm.svsm.module_report, key_root=cvm.svsm.module_key_root,
                              disk=DiskAdapter(BlockDevice(MemoryImage(16))))
        with ModuleHost([PastTheEnd], mode="inprocess", providers=providers, policy=Policy(**privileged)) as host:
            cvm.svsm.attach_module_host(host)
            host.wait_module_ready("pasttheend", 10)
            assert "disk" in host.module("pasttheend").granted
            assert cvm.guest.svsm_call(P, 0).rax == ResultCode.INVALID_PARAMETER
            assert cvm.guest.svsm_call(P, 1).rax == ResultCode.INVALID_PARAMETER
            assert cvm.svsm.panicker.panicked is None
            cvm.svsm.attach_module_host(None)


def test_disk_adapter_maps_device_failures_to_result_codes() -> None:
    disk = DiskAdapter(BlockDevice(MemoryImage(4), faults=FaultInjector(0, CrashPolicy.LOSE_ALL)))
    with pytest.raises(InvalidParameter):
        disk.read(4 * BLOCK_SIZE, BLOCK_SIZE)
    with pytest.raises(InvalidRequest):  # the injected crash stops the device
        disk.write(0, bytes(BLOCK_SIZE))
    with pytest.raises(InvalidRequest):
        disk.read(0, BLOCK_SIZE)
    with pytest.raises(InvalidRequest):
        disk.flush()
