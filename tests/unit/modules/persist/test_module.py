"""The persistence module behind the kernel's module host: other modules' storage goes to the store."""

from __future__ import annotations

import logging

import pytest

from svsm.kernel.hw.blockdev import BlockDevice, DiskAdapter, MemoryImage, TamperingAdversary
from svsm.kernel.ipc import ModuleHost, Providers
from svsm.modules.persist import PersistModule, Quota
from svsm.sdk import Busy, InvalidRequest

ROOT = bytes(range(32))


class Persist(PersistModule):
    """The module with test quotas (the host instantiates classes in the module process)."""

    def __init__(self) -> None:
        super().__init__(default_quota=Quota(100, 1 << 20))


class TinyQuota(PersistModule):
    def __init__(self) -> None:
        super().__init__(default_quota=Quota(1, 100))


@pytest.fixture(autouse=True)
def _fresh_module_logger():
    """In-process hosts leave their kernel-log handler on the module's logger; drop it per test."""
    yield
    logging.getLogger("svsm.module.persist").handlers.clear()


def reboot() -> None:
    logging.getLogger("svsm.module.persist").handlers.clear()


def host_for(image: MemoryImage, key_root: bytes = ROOT, adversary=None, module=None) -> ModuleHost:
    disk = DiskAdapter(BlockDevice(image, adversary=adversary))
    return ModuleHost([module or Persist], mode="inprocess",
                      providers=Providers(disk=disk, key_root=key_root))


def test_storage_of_other_modules_persists_across_boots() -> None:
    image = MemoryImage(256)
    with host_for(image) as host:
        tpm = host.providers.storage.backend_for("tpm")
        tpm.put("tpm", "nv", b"state")
        tpm.put("tpm", "seed", b"s")
        host.providers.storage.backend_for("uefi").put("uefi", "nv", b"vars")
        assert tpm.delete("tpm", "seed") is True and tpm.delete("tpm", "seed") is False
        assert tpm.list("tpm", "") == ["nv"]
    reboot()
    with host_for(image) as host:  # a reboot with the same state directory
        storage = host.providers.storage
        assert storage.backend_for("tpm").get("tpm", "nv") == b"state"
        assert storage.backend_for("uefi").get("uefi", "nv") == b"vars"
        assert storage.backend_for("tpm").get("tpm", "seed") is None


def test_other_measurement_cannot_read_and_the_module_fails() -> None:
    image = MemoryImage(256)
    with host_for(image) as host:
        host.providers.storage.backend_for("tpm").put("tpm", "nv", b"state")
    before = image.snapshot()
    reboot()
    with host_for(image, key_root=bytes(32)) as host:  # another SVSM: another PSP-derived key root
        info = {m.name: m for m in host.modules()}["persist"]
        assert "failed authentication" in info.last_failure and info.state != "serving"
        with pytest.raises((Busy, InvalidRequest)):
            host.providers.storage.backend_for("tpm").get("tpm", "nv")
    assert image.snapshot() == before  # never formatted over


def test_quota_reaches_the_caller_as_a_result_code() -> None:
    image = MemoryImage(256)
    with host_for(image, module=TinyQuota) as host:
        tpm = host.providers.storage.backend_for("tpm")
        tpm.put("tpm", "a", b"1")
        with pytest.raises(InvalidRequest):
            tpm.put("tpm", "b", b"2")


def test_tampering_at_runtime_stops_serving() -> None:
    image = MemoryImage(256)
    adv = TamperingAdversary()
    with host_for(image, adversary=adv) as host:
        tpm = host.providers.storage.backend_for("tpm")
        tpm.put("tpm", "nv", b"state" * 100)
        adv.flips = {n: [100] for n in range(2, 256)}
        with pytest.raises(InvalidRequest):
            tpm.get("tpm", "nv")
        adv.flips = {}
        with pytest.raises(InvalidRequest):
            tpm.get("tpm", "nv")  # refuses from then on


@pytest.mark.slow
def test_vtpm_keeps_its_seeds_across_boots_in_sandboxed_processes(tmp_path) -> None:
    """The installed tpm and persist modules, sandboxed: the EK (from the seeds) survives a reboot."""
    from svsm.kernel.hw.blockdev import FileImage

    def boot() -> tuple[list, list[str]]:
        image = FileImage(tmp_path / "persist.img", 2048)
        try:
            with ModuleHost.from_installed(blocked=("migrate",), mode="process",
                                           providers=Providers(disk=DiskAdapter(BlockDevice(image)),
                                                               key_root=ROOT)) as host:
                states = {m.name: m.state for m in host.modules()}
                assert states.get("persist") == "serving" and states.get("tpm") == "serving", states
                manifests = list(host.service_manifests())
                keys = host.providers.storage.backend_for("tpm").list("tpm", "")
            return manifests, keys
        finally:
            image.close()

    first, keys = boot()
    assert first and keys  # the vTPM saved its state through the persistence module
    second, _ = boot()
    assert second == first  # same EK: the seeds came back from the sealed store


def test_syscall_block_io_splits_large_transfers() -> None:
    from svsm.modules.persist import SyscallBlockIO

    disk = DiskAdapter(BlockDevice(MemoryImage(300)))
    calls: list[tuple[str, int]] = []

    class Sys:
        def disk_size(self) -> int:
            return disk.size()

        def disk_read(self, offset: int, size: int) -> bytes:
            calls.append(("r", size))
            return disk.read(offset, size)

        def disk_write(self, offset: int, data: bytes) -> None:
            calls.append(("w", len(data)))
            disk.write(offset, data)

        def disk_flush(self) -> None:
            calls.append(("f", 0))

    io = SyscallBlockIO(Sys())
    assert io.num_blocks == 300
    data = bytes(range(256)) * 16 * 130  # 130 blocks
    io.write(5, data)
    io.flush()
    assert io.read(5, 130) == data
    assert [c for c in calls if c[0] == "w"] == [("w", 64 * 4096), ("w", 64 * 4096), ("w", 2 * 4096)]
    assert max(size for kind, size in calls if kind == "r") == 64 * 4096


@pytest.fixture
def tcp_anchor(fake_psp):
    """An anchor service on loopback TCP that accepts the fake PSP's reports."""
    import itertools
    import os
    import threading

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from svsm.modules.persist import AnchorService
    from svsm.modules.persist._anchor_service import serve_tcp

    psp = fake_psp()
    now = [0]
    service = AnchorService(Ed25519PrivateKey.generate(), psp.verifier(), clock=lambda: now[0], rng=os.urandom)
    server = serve_tcp(service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield psp, service, server.server_address[:2], now
    server.shutdown()
    server.server_close()


def anchored_host(image: MemoryImage, psp, address, anchor_key=None) -> ModuleHost:
    """The installed persist module, sandboxed, with the kernel's anchor relay and fake PSP reports."""
    from svsm.kernel.hw.blockdev import ANCHOR_SERVICE, AnchorLink

    host = ModuleHost.from_installed(blocked=("migrate", "tpm"), mode="process",
                                     providers=Providers(disk=DiskAdapter(BlockDevice(image)), key_root=ROOT))
    host.providers.report = lambda rd: psp.attest(rd)[0]
    host.register_service(ANCHOR_SERVICE, AnchorLink(*address, anchor_key=anchor_key))
    return host


@pytest.mark.slow
def test_anchor_through_the_kernel_relay_detects_rollback_and_clones(tcp_anchor) -> None:
    psp, service, address, now = tcp_anchor
    image = MemoryImage(256)
    with anchored_host(image, psp, address, anchor_key=service.public_key) as host:
        host.providers.storage.backend_for("tpm").put("tpm", "nv", b"1")
        old = image.snapshot()
        host.providers.storage.backend_for("tpm").put("tpm", "nv", b"2")
        clone = MemoryImage(256)
        clone.restore(image.snapshot())
        with anchored_host(clone, psp, address) as second:  # the host starts a copy of the CVM
            info = {m.name: m for m in second.modules()}["persist"]
            assert info.state != "serving" and "CloneDetected" in info.last_failure
    assert service.statistics().live_leases == 0  # the first released its lease at stop
    image.restore(old)  # the host replays the older image
    with anchored_host(image, psp, address) as host:
        info = {m.name: m for m in host.modules()}["persist"]
        assert info.state != "serving" and "RollbackDetected" in info.last_failure
