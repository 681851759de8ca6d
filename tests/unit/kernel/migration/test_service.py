"""The kernel ``vm`` service with the ``migrate`` module driving it (``run_migration``).

Two CVMs in this process, each with a module host running the migrate module (in-process and
sandboxed), joined by a socketpair the kernel relays; plus the service's own input checks.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import msgspec
import pytest

PAGE = 4096


def _host(cvm: Any, mode: str) -> Any:
    import svsm.modules.migrate as migrate_module
    from svsm.kernel.ipc import ModuleHost, Providers

    providers = Providers(report=cvm.svsm.module_report, key_root=cvm.svsm.module_key_root)
    return ModuleHost([migrate_module], mode=mode, providers=providers)


def _migrate(mode: str, *, hidden: bool = False) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    from svsm.kernel import boot
    from svsm.kernel.hw.adversary import AdversarialHypervisor
    from svsm.kernel.migration import MigratableVm, RunGate, run_migration

    with contextlib.ExitStack() as st:
        hv = AdversarialHypervisor()
        src = st.enter_context(boot(vcpus=1, memory="16M", hypervisor=hv))
        dst = st.enter_context(boot(vcpus=1, memory="16M", seed=1))
        src.guest.accept_memory(0, src.layout.svsm_base)
        gpas = [src.guest.pool.take() for _ in range(8)]
        for i, gpa in enumerate(gpas):
            src.guest.mem.write(gpa, bytes([i + 1]) * PAGE)
        shost, dhost = st.enter_context(_host(src, mode)), st.enter_context(_host(dst, mode))
        svm, dvm = MigratableVm(src, module_host=shost), MigratableVm(dst, gate=RunGate(paused=True), module_host=dhost)
        ark = src.psp.chip.chain_pem()[0]
        a, b = socket.socketpair()
        st.callback(a.close)
        st.callback(b.close)
        res: dict[str, Any] = {}
        progress: list[Any] = []
        t = threading.Thread(target=lambda: res.setdefault("d", run_migration(dhost, dvm, b, "destination", ark=ark)))
        t.start()
        if hidden:  # after round 0 the guest writes a page and the hypervisor hides it
            orig = svm.dirty_frames

            def dirty() -> set[int]:
                if not res.get("wrote"):
                    res["wrote"] = True
                    src.guest.mem.write(gpas[3], b"\xee" * PAGE)
                    orig()
                    return set()
                return orig()

            svm.dirty_frames = dirty  # type: ignore[method-assign]
        res["s"] = run_migration(shost, svm, a, "source", ark=ark, on_progress=progress.append)
        t.join(60)
        got = dst.platform.vcpus[0].view(0).read(gpas[3], 8)
        return res["s"], res["d"], progress, got


@pytest.mark.parametrize("mode", ["inprocess", "process"])
def test_the_migrate_module_migrates_through_the_vm_service(mode: str) -> None:
    s, d, progress, got = _migrate(mode)
    assert s["result"] == d["result"] == "committed", (s, d)
    assert s["fingerprint"] == d["fingerprint"] and s["bytes_sent"] == d["bytes_received"] > 0
    assert got == bytes([4]) * 8
    assert progress and progress[-1].phase in ("stop-and-copy", "precopy")
    assert s["downtime"] > 0 and s["rounds"] >= 2


def test_a_page_the_hypervisor_hides_is_repaired_by_the_final_check() -> None:
    s, d, _, got = _migrate("inprocess", hidden=True)
    assert s["result"] == d["result"] == "committed"
    assert s["resent_chunks"] >= 1 and got == b"\xee" * 8


def test_the_service_refuses_malformed_requests_and_other_modules() -> None:
    from svsm.kernel import boot
    from svsm.kernel.migration import MigratableVm, VmService
    from svsm.sdk import InvalidParameter, InvalidRequest

    with boot(vcpus=1, memory="16M") as cvm:
        a, b = socket.socketpair()
        with a, b:
            svc = VmService(MigratableVm(cvm), a)
            with pytest.raises(InvalidRequest):
                svc("tpm", "info", b"")
            for op, payload in [("nope", b""), ("read", b"\x01\x02\x03"), ("read", b"\0" * 4 * 161),
                                ("write", b"\xc1"), ("write", msgspec.msgpack.encode([[1], [1], [b"x"]])),
                                ("recv", msgspec.msgpack.encode(0)), ("digests", msgspec.msgpack.encode([10**6])),
                                ("fingerprint", msgspec.msgpack.encode("zz"))]:  # fmt: skip
                with pytest.raises(InvalidParameter):
                    svc("migrate", op, payload)
            assert msgspec.msgpack.decode(svc("migrate", "info", b""))["vcpus"] == 1
            a.close()
            b.close()
            with pytest.raises(InvalidRequest):  # the peer connection is gone: an error code, not a kernel bug
                svc("migrate", "send", b"x" * 10)


def test_a_source_whose_module_fails_resumes_its_guest() -> None:
    from svsm.kernel import boot
    from svsm.kernel.migration import GateState, MigratableVm, run_migration
    from svsm.sdk import Busy

    class Host:  # the module dies in the middle of stop-and-copy
        def __init__(self, vm: Any) -> None:
            self.vm, self.services = vm, {}

        def register_service(self, name: str, h: Any) -> None:
            self.services[name] = h

        def unregister_service(self, name: str) -> None:
            del self.services[name]

        def command(self, module: str, name: str, payload: bytes, timeout: Any) -> bytes:
            self.services["vm"]("migrate", "dirty_start", b"")
            self.services["vm"]("migrate", "pause", b"")
            raise Busy("module crashed")

    with boot(vcpus=1, memory="16M") as cvm:
        vm = MigratableVm(cvm)
        a, b = socket.socketpair()
        with a, b:
            out = run_migration(Host(vm), vm, a, "source", ark=b"")
        assert out["result"] == "aborted" and "Busy" in out["reason"]
        assert vm.gate.state is GateState.RUNNING


def test_the_module_never_gets_a_vmpl0_report_over_bytes_of_its_choice() -> None:
    """The vm service labels REPORT_DATA (a module cannot forge the services attestation with it)."""
    import hashlib

    from svsm.kernel import boot
    from svsm.kernel.migration import MIGRATION_REPORT_LABEL, MigratableVm, VmService
    from svsm.modules.migrate import MIGRATION_REPORT_LABEL as MODULE_LABEL
    from svsm.modules.migrate import migration_report_data
    from svsm.sdk.attestation import AttestationReport

    assert MIGRATION_REPORT_LABEL == MODULE_LABEL
    chosen = hashlib.sha512(b"nonce" + b"forged services manifest").digest()
    with boot(vcpus=1, memory="16M") as cvm:
        a, b = socket.socketpair()
        with a, b:
            report, *_ = msgspec.msgpack.decode(VmService(MigratableVm(cvm), a)("migrate", "attest", chosen))
    rd = AttestationReport.from_bytes(report).report_data
    assert rd != chosen and rd == migration_report_data(chosen)
