"""A hypervisor that hides dirty pages, a destination with another measurement, a destination that
dies mid-migration, and a source that tries to resume after the commit."""

from __future__ import annotations

import pytest

from svsm.kernel.migration import GuestFenced
from svsm.kernel.migration._workload import CONTROL, GuestWorkload
from svsm.modules.migrate import MigrationAborted, MigrationOptions, MigrationReport

PAGE = 4096


def test_hidden_dirty_pages_still_arrive_correct(scene) -> None:
    # The hypervisor never reports the workload's region or its control block as dirty.
    fields = CONTROL.unpack(scene.src.guest.mem.read(scene.workload.control_gpa, CONTROL.size))
    region, pages = fields[6], fields[2]
    hidden = {scene.workload.control_gpa // PAGE} | {region // PAGE + i for i in range(pages)}
    scene.src.platform.hypervisor.hide_dirty = hidden
    s, d = scene.migrate(options=MigrationOptions(converge_pages=4))
    assert isinstance(s, MigrationReport) and s.result == "committed", s
    assert s.resent_chunks >= 1 and s.fingerprint == d.fingerprint
    dg = scene.dst.guest
    wl = GuestWorkload.attach(dg)
    check = wl.verify()  # every page matches the step counter the guest had at the pause
    assert check.step == scene.workload.step and check.step > 0


def test_destination_with_another_measurement_is_refused(scene, tmp_path) -> None:
    # The destination presents evidence of a different launch (another SVSM image) on the same chip.
    fw = scene.dst.psp
    ctx = fw.launch_start(0x30000)
    fw.launch_update_normal(ctx, 0x1000, b"another SVSM image".ljust(4096, b"\0"))
    assert fw.launch_finish(ctx) != scene.dst.measurement
    real = scene.dvm.attest
    scene.dvm.attest = lambda rd: (fw.build_report(ctx, rd, 0), *real(rd)[1:])  # type: ignore[method-assign]
    s, d = scene.migrate()
    assert isinstance(s, MigrationAborted) and isinstance(d, MigrationAborted)
    assert scene.svm.gate.state.value == "running" and scene.svm.statistics().pages_read == 0
    assert scene.dvm.statistics().pages_written == 0
    assert scene.guest_still_runs_on_source()


def test_destination_dying_mid_migration_resumes_the_source(scene) -> None:
    calls = []
    real = scene.dvm.write_pages

    def dies(pages):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("destination host lost power")
        real(pages)

    scene.dvm.write_pages = dies  # type: ignore[method-assign]
    s, d = scene.migrate(options=MigrationOptions(batch_pages=64))
    assert isinstance(s, MigrationAborted) and isinstance(d, MigrationAborted)
    assert not scene.svm.fenced and scene.guest_still_runs_on_source()


def test_source_cannot_resume_after_the_commit(scene) -> None:
    s, d = scene.migrate()
    assert s.result == d.result == "committed"
    with pytest.raises(GuestFenced):
        scene.svm.resume()
    with pytest.raises(GuestFenced):
        with scene.svm.gate.running():
            scene.workload.run_step()
    scene.thread.join(5)
    assert not scene.thread.is_alive() and not scene.guest_error  # the old guest thread was stopped
    gv = scene.src.svsm.guest_vmpl
    assert scene.src.platform.vcpus[0].vmsa_sfn[gv] is None
    assert all(k == bytes(32) for k in scene.src.psp_context.vmpcks[gv:])
    # ... while the guest goes on at the destination
    wl = GuestWorkload.attach(scene.dst.guest)
    import threading

    wl.run(threading.Event(), scene.dvm.gate, max_steps=5)
    assert wl.verify().step == scene.workload.step + 5
