"""End to end through a booted CVM: the guest's vTPM keeps NV and seeds across restarts of the CVM.

Boot -> ``cvm.run_modules(state_dir=DIR)`` (persist + tpm, sandboxed) -> the guest driver sends TPM
commands over SVSM_VTPM_CMD -> the vTPM saves its state through the storage syscalls -> the persist
module seals it into ``DIR/persist.img``.  A second boot with the same state directory reads it back;
a tampered image makes the persist module fail (and the vTPM does not silently start blank).
"""

from __future__ import annotations

import struct

import pytest

pytestmark = pytest.mark.slow

TPM_RS_PW = 0x40000009
TPM_RH_OWNER = 0x40000001
NV_INDEX = 0x01500020
#: TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD: the index's own (empty) auth value
NV_ATTRS = (1 << 2) | (1 << 18)
PW_SESSION = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)


def _cmd(cc: int, handles: tuple[int, ...], params: bytes) -> bytes:
    body = b"".join(struct.pack(">I", h) for h in handles) + struct.pack(">I", len(PW_SESSION)) + PW_SESSION + params
    return struct.pack(">HII", 0x8002, 10 + len(body), cc) + body


def _rc(rsp: bytes) -> int:
    return struct.unpack(">I", rsp[6:10])[0]


def startup(drv) -> None:
    rsp = drv.execute(bytes.fromhex("80010000000c000001440000"))  # TPM2_Startup(CLEAR)
    assert _rc(rsp) in (0, 0x100), hex(_rc(rsp))  # 0x100: TPM_RC_INITIALIZE (already started)


def nv_define_and_write(drv, data: bytes) -> None:
    public = struct.pack(">IHIHH", NV_INDEX, 0x000B, NV_ATTRS, 0, len(data))
    define = _cmd(0x12A, (TPM_RH_OWNER,), struct.pack(">H", 0) + struct.pack(">H", len(public)) + public)
    assert _rc(drv.execute(define)) == 0
    write = _cmd(0x137, (NV_INDEX, NV_INDEX), struct.pack(">H", len(data)) + data + struct.pack(">H", 0))
    assert _rc(drv.execute(write)) == 0


def nv_read(drv, size: int) -> bytes | None:
    rsp = drv.execute(_cmd(0x14E, (NV_INDEX, NV_INDEX), struct.pack(">HH", size, 0)))
    if _rc(rsp) != 0:
        return None
    (n,) = struct.unpack(">H", rsp[14:16])
    return rsp[16:16 + n]


@pytest.fixture(scope="module")
def psp_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("psp"))


def _boot_and(state_dir, psp_dir, action):
    from svsm.kernel import boot
    from svsm.sdk.tpm import VtpmDriver

    with boot(psp_state_dir=psp_dir) as cvm, cvm.run_modules("process", state_dir=state_dir) as host:
        manifests = dict(host.service_manifests())
        drv = VtpmDriver(cvm.guest)
        startup(drv)
        return manifests, action(drv)


def test_vtpm_nv_and_seeds_survive_a_restart(tmp_path, psp_dir) -> None:
    state = tmp_path / "state"
    data = b"survives"

    def first_boot(drv) -> None:
        assert nv_read(drv, len(data)) is None  # a new state directory is a new TPM
        nv_define_and_write(drv, data)

    first, _ = _boot_and(state, psp_dir, first_boot)
    second, got = _boot_and(state, psp_dir, lambda drv: nv_read(drv, len(data)))
    assert got == data  # NV came back from the sealed store
    assert second == first  # same EK (same seeds) in the attestation services manifest


def test_tampered_state_is_not_replaced_by_a_blank_tpm(tmp_path, psp_dir) -> None:
    from svsm.kernel import boot
    from svsm.kernel.hw.blockdev import BLOCK_SIZE, STATE_IMAGE

    state = tmp_path / "state"
    _boot_and(state, psp_dir, lambda drv: nv_define_and_write(drv, b"12345678"))
    image = state / STATE_IMAGE
    with open(image, "r+b") as f:  # the host flips a byte in every used data block
        for lba in range(2, 64):
            f.seek(lba * BLOCK_SIZE + 100)
            b = f.read(1)
            f.seek(lba * BLOCK_SIZE + 100)
            f.write(bytes([b[0] ^ 1]))
    before = image.read_bytes()
    with boot(psp_state_dir=psp_dir) as cvm, cvm.run_modules("process", state_dir=state, wait=1.0) as host:
        info = {m.name: m for m in host.modules()}
        assert info["persist"].state != "serving" and "failed authentication" in info["persist"].last_failure
        assert info["tpm"].state != "serving"  # no blank vTPM with a new EK instead of the real one
    assert image.read_bytes() == before  # never formatted over


def test_state_dir_moved_to_a_cvm_with_another_measurement_cannot_be_unsealed(tmp_path, psp_dir) -> None:
    from svsm.kernel import boot

    state = tmp_path / "state"
    with boot(psp_state_dir=psp_dir, memory="64M") as cvm, cvm.run_modules("process", state_dir=state) as host:
        host.providers.storage.backend_for("tpm").put("tpm", "probe", b"x")
        first = cvm.measurement
    with boot(psp_state_dir=psp_dir, memory="128M") as cvm, \
            cvm.run_modules("process", state_dir=state, wait=1.0) as host:
        assert cvm.measurement != first  # another memory layout is measured: another launch digest
        info = {m.name: m for m in host.modules()}
        assert info["persist"].state != "serving" and "failed authentication" in info["persist"].last_failure


@pytest.fixture
def anchor_for_chip(psp_dir):
    """An anchor on loopback TCP trusting the chip of ``psp_dir`` (real VCEK-signed reports)."""
    import os
    import threading
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from svsm.kernel.hw.psp import Chip
    from svsm.modules.persist import AnchorService, chain_verifier
    from svsm.modules.persist._anchor_service import serve_tcp

    ark, ask, vcek = Chip.load_or_create(psp_dir).chain_pem()
    service = AnchorService(Ed25519PrivateKey.generate(), chain_verifier(ark, ask, [vcek]), clock=time.monotonic_ns,
                            rng=os.urandom)
    server = serve_tcp(service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield service, server.server_address[:2]
    server.shutdown()
    server.server_close()


def _persist_behind(cvm, state_dir, address, key):
    """What ``svsm run --state DIR --anchor HOST:PORT`` is asked to do (requests.md, PERSIST -> KCORE)."""
    from svsm.kernel.hw.blockdev import ANCHOR_SERVICE, AnchorLink, open_state_disk
    from svsm.kernel.ipc import ModuleHost, Providers

    disk = open_state_disk(state_dir)
    host = ModuleHost.from_installed(blocked=("migrate", "tpm"), mode="process",
                                     providers=Providers(report=cvm.svsm.module_report,
                                                         key_root=cvm.svsm.module_key_root, disk=disk))
    host.register_service(ANCHOR_SERVICE, AnchorLink(*address, anchor_key=key))
    return host, disk


def test_clone_of_a_running_cvm_is_refused_and_an_old_image_is_a_rollback(tmp_path, psp_dir, anchor_for_chip) -> None:
    import shutil

    from svsm.kernel import boot
    from svsm.kernel.hw.blockdev import STATE_IMAGE

    service, address = anchor_for_chip
    state, clone_state = tmp_path / "state", tmp_path / "clone"

    def status(host):
        return {m.name: m for m in host.modules()}["persist"]

    with boot(psp_state_dir=psp_dir) as cvm:
        host, disk = _persist_behind(cvm, state, address, service.public_key)
        with host:
            assert status(host).state == "serving"
            host.providers.storage.backend_for("tpm").put("tpm", "nv", b"1")
            shutil.copytree(state, clone_state)  # the host copies the state directory ...
            host.providers.storage.backend_for("tpm").put("tpm", "nv", b"2")
            with boot(psp_state_dir=psp_dir) as cvm2:  # ... and launches a second CVM from it
                host2, disk2 = _persist_behind(cvm2, clone_state, address, service.public_key)
                with host2:
                    assert status(host2).state != "serving" and "CloneDetected" in status(host2).last_failure
                disk2.close()
        disk.close()
    shutil.copy(clone_state / STATE_IMAGE, state / STATE_IMAGE)  # replay the older image
    with boot(psp_state_dir=psp_dir) as cvm:
        host, disk = _persist_behind(cvm, state, address, service.public_key)
        with host:
            assert "RollbackDetected" in status(host).last_failure
        disk.close()
    assert service.statistics().clones >= 1
