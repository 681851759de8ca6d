"""Boot: the measured SVSM image, the guest's secrets page, the guest VMPL, clean shutdown, and
``svsm run``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from svsm.kernel import boot
from svsm.kernel._boot import MemoryLayout, _launch_plan, kernel_image, parse_size
from svsm.kernel.hw.psp import LaunchDigest
from svsm.sdk.attestation import SNP_SECRETS_PAGE


def test_measurement_covers_the_kernel_image() -> None:
    with boot(vcpus=1, memory="12M") as cvm:
        plan = _launch_plan(cvm.layout, kernel_image(), cvm.firmware, cvm.launch_parameters)
        assert LaunchDigest().apply(plan) == cvm.measurement
        image = bytearray(kernel_image())
        image[100] ^= 1  # one changed byte of kernel code
        assert LaunchDigest().apply(_launch_plan(cvm.layout, bytes(image), cvm.firmware, cvm.launch_parameters)) != cvm.measurement
        assert b"_boot.py" in kernel_image() and b"def boot(" in kernel_image()


def test_boot_is_deterministic_per_configuration() -> None:
    with boot(vcpus=1, memory="12M") as a:
        m1 = a.measurement
    with boot(vcpus=1, memory="12M", seed=7) as b:
        assert b.measurement == m1  # seed changes keys, not what is measured
    with boot(vcpus=1, memory="16M") as c:
        assert c.measurement != m1  # the SVSM moves with the memory size


@pytest.mark.parametrize("vmpl", [1, 2, 3])
def test_guest_secrets_page_and_vmpl(vmpl: int) -> None:
    with boot(vcpus=1, memory="12M", guest_vmpl=vmpl) as cvm:
        g = cvm.guest
        assert g.vmpl == vmpl and cvm.platform.vcpus[0].vmpl == vmpl
        s = SNP_SECRETS_PAGE.from_buffer_copy(g.mem.read(cvm.layout.guest_secrets_gpa, 4096))
        real = cvm.svsm.secrets
        for i in range(4):
            assert s.vmpck(i) == (bytes(32) if i < vmpl else real.vmpck(i))
        assert any(real.vmpck(0))
        lay = cvm.layout
        assert (s.svsm_base, s.svsm_size, s.svsm_caa, s.svsm_max_version, s.svsm_guest_vmpl) == (
            lay.svsm_base, lay.svsm_size, lay.guest_caa_gpa, 1, vmpl)
        assert g.query_protocol(0) == (1, 1)
        with pytest.raises(Exception):  # noqa: B017 -- the real secrets page is SVSM memory
            g.mem.read(lay.secrets_gpa, 8)


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        with boot(guest_vmpl=0):
            pass
    with pytest.raises(ValueError):
        MemoryLayout.compute(6 << 20, len(kernel_image()))
    assert parse_size("64M") == 64 << 20 and parse_size("1G") == 1 << 30 and parse_size(4096) == 4096


def test_shutdown_decommissions() -> None:
    with boot(vcpus=2, memory="12M") as cvm:
        g = cvm.guest
    assert all(v.vmpl is None for v in cvm.platform.vcpus)
    assert not any(cvm.psp_context.vmpcks[0])
    cvm.shutdown()  # idempotent
    _ = g


@pytest.mark.slow
def test_svsm_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    from svsm.kernel.cli import main

    # --modules none: modules run by default since LEAD's request of 2026-11-27 00:45
    assert main(["run", "--vcpus", "3", "--memory", "16M", "--modules", "none", "--json"]) == 0
    rep: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert rep["vcpus"] == 3 and rep["attestation"]["verified"] and rep["attestation"]["measurement_matches"]
    assert rep["protocols"]["core"] == [1, 1] and rep["protocols"]["vtpm"] is None
    assert rep["calls_per_cpu"][1] >= 1 and rep["calls_per_cpu"][2] >= 1
    assert rep["accepted_bytes"] > 8 << 20
    assert set(rep["phases"]) >= {"accept_memory", "bring_up_aps", "attest", "verify"}


def test_svsm_run_table_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from svsm.kernel.cli import main

    assert main(["run", "--vcpus", "1", "--memory", "12M"]) == 0
    out = capsys.readouterr().out
    assert "measurement" in out and "PVALIDATE_LOCK" in out
    assert main(["run", "--memory", "lots"]) == 2
    assert main(["run", "--memory", "5M"]) == 2


def test_shutdown_reports_kernel_leaks() -> None:
    from svsm.kernel.mm import MemoryLeak

    with pytest.raises(MemoryLeak):
        with boot(vcpus=2, memory="12M") as cvm:
            cvm.guest.start_ap(1)
            cvm.svsm.allocator.allocate_page()  # a kernel page nobody frees
    with boot(vcpus=2, memory="12M") as cvm:  # the same work without the leak is clean
        cvm.guest.accept_memory(0x10_0000, 0x10_0000)
        cvm.guest.start_ap(1)
        cvm.guest.attest(bytes(64))


def test_guest_on() -> None:
    with boot(vcpus=3, memory="12M") as cvm:
        assert cvm.guest_on(0) is cvm.guest
        with pytest.raises(ValueError):
            cvm.guest_on(1)
        ap = cvm.guest.start_ap(2)
        assert cvm.guest_on(2) is ap and ap.query_protocol(0) == (1, 1)


@pytest.mark.slow
def test_svsm_run_with_modules(capsys: pytest.CaptureFixture[str]) -> None:
    """The installed modules serve their protocols behind the SVSM and enter the services manifest."""
    from svsm.kernel.cli import main
    from svsm.sdk.guest import VTPM_SERVICE_GUID

    assert main(["run", "--modules", "inprocess", "--vcpus", "2", "--memory", "16M", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["protocols"]["vtpm"] == [1, 1]
    assert str(VTPM_SERVICE_GUID) in rep["attestation"]["manifest_services"]
    # the guest's TPM driver reached the vTPM, and its EK is the attested one
    assert rep["vtpm"]["ek_matches_manifest"] and rep["vtpm"]["pcr16_extended"] and rep["vtpm"]["random_bytes"] == 16
    rows = {m["name"]: m for m in rep["modules"]}
    assert rows["tpm"]["state"] == "serving" and rows["tpm"]["calls"] >= 6 and len(rows["tpm"]["measurement"]) == 16
    assert rows["persist"]["state"].startswith("not started") and not rows["persist"]["mode"]


@pytest.mark.slow
def test_svsm_run_defaults_to_sandboxed_modules(capsys: pytest.CaptureFixture[str]) -> None:
    """Plain ``svsm run`` starts the modules in processes and shows their table and sandbox."""
    from svsm.kernel.cli import main

    assert main(["run", "--vcpus", "1", "--memory", "12M"]) == 0
    # the tables wrap at the console width: compare without blanks and box-drawing characters
    flat = "".join(c for c in capsys.readouterr().out if not c.isspace() and not "\u2500" <= c <= "\u257f")
    assert "servicemodules(ring3)" in flat and "seccomp" in flat and "bindstheEK:yes" in flat
    assert "persist:notstarted(no--state" in flat


def test_vtpm_check_refuses_a_foreign_ek() -> None:
    """The EK check fails when the manifest attests another EK (or none)."""
    from svsm.kernel.cli._run_vtpm import VtpmCheckFailed, vtpm_workload
    from svsm.sdk.guest import VTPM_SERVICE_GUID

    with boot(vcpus=1, memory="12M") as cvm, cvm.run_modules("inprocess") as host:
        assert host.serves(2)
        cvm.guest.accept_memory(0x10_0000, 0x10_0000)
        with pytest.raises(VtpmCheckFailed):
            vtpm_workload(cvm.guest, [(VTPM_SERVICE_GUID, b"not the EK")], VTPM_SERVICE_GUID)
        with pytest.raises(VtpmCheckFailed):
            vtpm_workload(cvm.guest, [], VTPM_SERVICE_GUID)


def test_module_key_root_is_bound_to_the_measurement() -> None:
    with boot(vcpus=1, memory="12M") as a:
        k1 = a.svsm.module_key_root
    with boot(vcpus=1, memory="12M", seed=3) as b:
        assert b.svsm.module_key_root == k1 and len(k1) == 32
    with boot(vcpus=1, memory="16M") as c:  # another measurement, another key
        assert c.svsm.module_key_root != k1


@pytest.mark.slow
def test_svsm_run_state_dir_survives_a_restart(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """--state DIR: the persist module gets DIR/persist.img and unseals it again on the next run
    (same kernel, same chip in DIR/psp, so the same measurement-bound key)."""
    from svsm.kernel.cli import main

    for _ in range(2):
        assert main(["run", "--state", str(tmp_path), "--modules", "inprocess", "--vcpus", "1",
                     "--memory", "12M", "--json"]) == 0  # fmt: skip
        rep = json.loads(capsys.readouterr().out)
        states = {m["name"]: m["state"] for m in rep["modules"]}
        assert states.get("persist") == "serving" and states.get("tpm") == "serving", states
    assert (tmp_path / "persist.img").exists() and (tmp_path / "psp").is_dir()


def test_secrets_come_from_the_os_rng_unless_seeded() -> None:
    """SECREVIEW 01:25: the host must not be able to predict VMPCK0 or the memory key."""
    def keys(**kw: Any) -> tuple[bytes, bytes]:
        with boot(vcpus=1, memory="12M", **kw) as cvm:
            return bytes(cvm.svsm.secrets.vmpck(0)), cvm.platform.host.read(cvm.firmware.gpa, 64)  # same plaintext

    (v1, c1), (v2, c2) = keys(), keys()
    assert v1 != v2 and c1 != c2  # VMPCK0 and the memory key (ciphertext of the same firmware page)
    assert keys(seed=5) == keys(seed=5)


def test_launch_parameters_are_measured_and_enforced() -> None:
    """LEAD 01:10: where the guest OS runs is part of the measurement, and the kernel runs with
    the parameters that were measured."""
    from svsm.kernel._launch_params import launch_parameters_page, read_launch_parameters
    from svsm.sdk import FatalError

    measurements = {}
    for vmpl in (1, 2, 3):
        with boot(vcpus=1, memory="12M", guest_vmpl=vmpl) as cvm:
            measurements[vmpl] = cvm.measurement
            assert read_launch_parameters(cvm.launch_parameters).guest_vmpl == vmpl
            plan = _launch_plan(cvm.layout, kernel_image(), cvm.firmware, cvm.launch_parameters)
            other = launch_parameters_page(guest_vmpl=vmpl % 3 + 1, vcpus=1, memory_size=12 << 20)
            assert LaunchDigest().apply(plan) == cvm.measurement
            assert LaunchDigest().apply(_launch_plan(cvm.layout, kernel_image(), cvm.firmware, other)) != cvm.measurement
    assert len(set(measurements.values())) == 3
    with pytest.raises(FatalError):
        read_launch_parameters(bytes(4096))


@pytest.mark.slow
def test_svsm_run_anchor_gives_persist_rollback_protection(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """LEAD/PERSIST 01:10: ``svsm run --state DIR --anchor HOST:PORT --anchor-key HEX`` relays the
    sandboxed persist module to a real anchor (served in a thread here), which it then uses."""
    import os
    import threading
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from svsm.kernel.cli import main
    from svsm.kernel.hw.psp import Chip
    from svsm.modules.persist import AnchorService, chain_verifier
    from svsm.modules.persist._anchor_service import serve_tcp

    ark, ask, vcek = Chip.load_or_create(str(tmp_path / "psp")).chain_pem()  # the chip svsm run will use
    service = AnchorService(Ed25519PrivateKey.generate(), chain_verifier(ark, ask, [vcek]), clock=time.monotonic_ns,
                            rng=os.urandom)
    server = serve_tcp(service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    try:
        argv = ["run", "--state", str(tmp_path), "--vcpus", "1", "--memory", "12M", "--anchor", f"{host}:{port}",
                "--anchor-key", service.public_key.hex(), "--json"]
        assert main(argv) == 0
        rep = json.loads(capsys.readouterr().out)
        assert {m["name"]: m["state"] for m in rep["modules"]}["persist"] == "serving"
        assert rep["anchor"] == {"address": f"{host}:{port}", "pinned_key": service.public_key.hex()}
        assert service.statistics().requests >= 1 and service.statistics().refused == 0
    finally:
        server.shutdown()
        server.server_close()
    assert main(["run", "--anchor", "localhost:1"]) == 2  # needs --state
    assert main(["run", "--state", str(tmp_path), "--anchor", "nohostport"]) == 2
