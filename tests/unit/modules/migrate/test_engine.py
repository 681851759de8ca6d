"""The migration engine against in-memory VMs: rounds, final check, two-phase commit, aborts."""

from __future__ import annotations

import os
import threading

from svsm.modules.migrate import MigrationAborted, MigrationOptions, MigrationReport, Progress

PAGE = 4096


def _fill(vm, n: int, tag: int = 1) -> None:
    for g in range(0, n, 3):
        vm.guest_write(g, bytes([tag, g & 0xFF]) * (PAGE // 2), state=0x30003)


def test_migration_moves_memory_state_and_modules_then_fences_the_source(ident, make_vm, migrate_pair) -> None:
    i = ident()
    src = make_vm(i, 64, modules={"tpm": b"tpm-state"})
    src.registers = {"rip": 0x1234, "rax": 7}
    _fill(src, 64)
    dst = make_vm(i, 64, modules={"tpm": b""}, paused=True)
    s, d = migrate_pair(src, dst, i, i)
    assert isinstance(s, MigrationReport) and isinstance(d, MigrationReport), (s, d)
    assert s.result == d.result == "committed"
    assert dst.pages == src.pages and dst.registers == src.registers and dst.modules == {"tpm": b"tpm-state"}
    assert src.state == "fenced" and dst.state == "running"
    assert s.fingerprint == d.fingerprint and s.resent_chunks == 0
    # round 0 skips pristine frames: only the written ones travel
    assert s.pages_per_round[0] == len(range(0, 64, 3))
    assert s.bytes_sent > 20 * PAGE and d.bytes_received == s.bytes_sent


def test_pages_written_during_precopy_arrive(ident, make_vm, migrate_pair) -> None:
    i = ident()
    src, dst = make_vm(i, 128), make_vm(i, 128, paused=True)
    _fill(src, 128)
    stop = threading.Event()
    written: list[int] = []

    def guest() -> None:
        n = 0
        while not stop.is_set():
            try:
                src.guest_write(n % 128, os.urandom(PAGE))
            except Exception:  # noqa: BLE001 -- paused or fenced: the guest stops
                return
            written.append(n)
            n += 1

    th = threading.Thread(target=guest)
    th.start()
    s, d = migrate_pair(src, dst, i, i, src_kwargs={"options": MigrationOptions(converge_pages=4, max_rounds=3)})
    stop.set()
    th.join()
    assert s.result == "committed", s
    assert written and dst.pages == src.pages
    assert s.rounds >= 2 and len(s.pages_per_round) == s.rounds


def test_a_page_the_dirty_log_hides_is_repaired_by_the_final_check(ident, make_vm, migrate_pair) -> None:
    i = ident()
    src, dst = make_vm(i, 64), make_vm(i, 64, paused=True)
    _fill(src, 64)
    src.hide_dirty = {5}
    done = []

    def on_progress(ev: Progress) -> None:
        # the guest writes page 5 right after round 0 copied it; the hypervisor never reports it
        if ev.round == 0 and ev.round_done == ev.round_pages and not done:
            src.guest_write(5, b"\x55" * PAGE)
            done.append(1)

    s, d = migrate_pair(src, dst, i, i, src_kwargs={"on_progress": on_progress})
    assert s.result == "committed", s
    assert s.resent_chunks == 1 and d.resent_chunks == 1
    assert dst.pages[5] == (1, b"\x55" * PAGE) == src.pages[5]


def test_destination_of_another_shape_refuses_and_the_source_resumes(ident, make_vm, migrate_pair) -> None:
    i = ident()
    src, dst = make_vm(i, 64), make_vm(i, 32, paused=True)
    _fill(src, 64)
    s, d = migrate_pair(src, dst, i, i)
    assert isinstance(s, MigrationAborted) and isinstance(d, MigrationAborted)
    assert src.state == "running" and dst.state == "paused"
    assert src._dirty is None  # dirty logging switched off again


def test_missing_module_on_the_destination_refuses(ident, make_vm, migrate_pair) -> None:
    i = ident()
    src, dst = make_vm(i, 16, modules={"tpm": b"x"}), make_vm(i, 16, paused=True)
    s, d = migrate_pair(src, dst, i, i)
    assert isinstance(s, MigrationAborted) and isinstance(d, MigrationAborted)
    assert src.state == "running"


def test_fingerprint_mismatch_aborts_before_the_commit(ident, make_vm, migrate_pair) -> None:
    i = ident()
    src, dst = make_vm(i, 16), make_vm(i, 16, paused=True)
    src.registers = {"rip": 1}
    real_import = dst.import_state
    dst.import_state = lambda blob: (real_import(blob), dst.registers.update(rip=2))  # type: ignore[method-assign]
    s, d = migrate_pair(src, dst, i, i)
    assert isinstance(s, MigrationAborted), s
    assert isinstance(d, MigrationAborted), d
    assert src.state == "running" and src.resumes == 1 and dst.state == "paused"


def test_destination_that_dies_mid_transfer_leaves_the_source_running(ident, make_vm, migrate_pair) -> None:
    i = ident()
    src, dst = make_vm(i, 256), make_vm(i, 256, paused=True)
    _fill(src, 256)
    calls = []
    real_write = dst.write_pages

    def dying(pages):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionResetError("destination crashed")
        real_write(pages)

    dst.write_pages = dying  # type: ignore[method-assign]
    s, d = migrate_pair(src, dst, i, i, src_kwargs={"options": MigrationOptions(batch_pages=16)})
    assert isinstance(s, MigrationAborted) and isinstance(d, MigrationAborted)
    assert src.state == "running"
    src.guest_write(1, b"\x01" * PAGE)  # the guest goes on at the source


def test_destination_with_another_measurement_is_refused(ident, make_vm, migrate_pair) -> None:
    good, evil = ident(), ident(b"evil" * 1024)
    src, dst = make_vm(good, 16), make_vm(evil, 16, paused=True)
    _fill(src, 16)
    s, d = migrate_pair(src, dst, good, good)
    assert isinstance(s, MigrationAborted) and isinstance(d, MigrationAborted)
    assert src.state == "running" and src.pauses == 0 and not dst.pages


def test_a_failing_fence_never_resumes_the_source(ident, make_vm, migrate_pair) -> None:
    i = ident()
    src, dst = make_vm(i, 16), make_vm(i, 16, paused=True)
    _fill(src, 16)

    def broken_fence() -> None:
        src.state = "fenced"  # half done, then the kernel fails
        raise OSError("fence failed half way")

    src.fence = broken_fence  # type: ignore[method-assign]
    s, d = migrate_pair(src, dst, i, i)
    assert isinstance(s, MigrationReport) and s.result == "fenced" and s.reason
    assert src.resumes == 0 and src.state == "fenced"
    assert type(d).__name__ == "MigrationInDoubt" and dst.state == "paused"  # nobody runs the guest
