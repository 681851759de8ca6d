"""The kernel's vm service on booted CVMs: pages with RMP state, digests, machine state, fencing."""

from __future__ import annotations

import contextlib

import pytest

from svsm.kernel import boot
from svsm.kernel.hw.adversary import AdversarialHypervisor
from svsm.kernel.migration import GuestFenced, MigratableVm, RunGate
from svsm.kernel.migration._state import PAGE_ASSIGNED, PAGE_VALIDATED, decode_state
from svsm.sdk import InvalidParameter, InvalidRequest

PAGE = 4096


@pytest.fixture
def pair():
    with contextlib.ExitStack() as st:
        src = st.enter_context(boot(vcpus=1, memory="16M", hypervisor=AdversarialHypervisor()))
        dst = st.enter_context(boot(vcpus=1, memory="16M", seed=1))
        src.guest.accept_memory(0, src.layout.svsm_base)
        yield src, dst


def _copy_all(svm: MigratableVm, dvm: MigratableVm) -> None:
    frames = list(svm.frames())
    for i in range(0, len(frames), 256):
        dvm.write_pages(svm.read_pages(frames[i : i + 256]))


def test_pages_are_read_in_plaintext_with_their_rmp_state(pair) -> None:
    src, _ = pair
    gpa = src.guest.pool.take()
    src.guest.mem.write(gpa, b"secret" * 100)
    vm = MigratableVm(src)
    (gfn, state, data), = vm.read_pages([gpa // PAGE])
    assert state & (PAGE_ASSIGNED | PAGE_VALIDATED) == PAGE_ASSIGNED | PAGE_VALIDATED
    assert (state >> 16) & 0xFF == 0x1F or (state >> 16) & 0xFF  # the guest VMPL (2) has access
    assert data[:600] == b"secret" * 100
    assert src.platform.host.read(gpa, 600) != b"secret" * 100  # the host sees ciphertext only
    assert vm.read_pages([0])[0] == (0, 0, None)  # a reserved, never accepted frame: pristine


def test_copied_memory_has_equal_digests_and_one_changed_page_changes_one_chunk(pair) -> None:
    src, dst = pair
    svm, dvm = MigratableVm(src), MigratableVm(dst, gate=RunGate(paused=True))
    gpa = src.guest.pool.take()
    src.guest.mem.write(gpa, b"\x42" * PAGE)
    _copy_all(svm, dvm)
    assert svm.digests() == dvm.digests()
    src.guest.mem.write(gpa + 8, b"\x43")
    diff = [c for c, (a, b) in enumerate(zip(svm.digests(), dvm.digests())) if a != b]
    assert diff == [gpa // PAGE // 256]
    assert dst.platform.vcpus[0].view(0).read(gpa, 8) == b"\x42" * 8  # imported in plaintext form


def test_machine_state_moves_vmsa_keys_and_the_guest_reads_its_memory(pair) -> None:
    src, dst = pair
    svm, dvm = MigratableVm(src), MigratableVm(dst, gate=RunGate(paused=True))
    g = src.guest
    g.regs.rbx = 0xB0B
    gpa = g.pool.take()
    g.mem.write(gpa, b"continuity")
    svm.pause()
    _copy_all(svm, dvm)
    dvm.import_state(svm.export_state())
    gv = src.svsm.guest_vmpl
    assert dst.platform.vcpus[0].vmsa(gv).to_bytes() == src.platform.vcpus[0].vmsa(gv).to_bytes()
    s_ctx, d_ctx = src.psp_context, dst.psp_context
    assert d_ctx.vmpcks[gv:] == s_ctx.vmpcks[gv:] and d_ctx.seqnos[gv:] == s_ctx.seqnos[gv:]
    assert d_ctx.vmrk == s_ctx.vmrk and d_ctx.vmpcks[0] != s_ctx.vmpcks[0]  # the SVSM's own key stays
    assert svm.fingerprint() == dvm.fingerprint()
    dvm.resume()
    dg = dst.guest
    assert dg.regs.rbx == 0xB0B and dg.mem.read(gpa, 10) == b"continuity"
    assert dg.query_protocol(0) is not None  # the migrated guest calls its (new) SVSM


def test_export_needs_a_paused_guest(pair) -> None:
    src, _ = pair
    with pytest.raises(InvalidRequest):
        MigratableVm(src).export_state()


@pytest.mark.parametrize(
    "page",
    [
        (10**9, 0, None),  # beyond memory
        (None, 0, None),  # the SVSM's own region (filled in below)
        (0x100, 1 << 40, None),  # unknown state bits
        (0x100, PAGE_ASSIGNED, b"short"),
        (0x100, 0x30, None),  # shared frame with state bits
    ],
)
def test_write_pages_refuses_malformed_records(pair, page) -> None:
    _, dst = pair
    dvm = MigratableVm(dst, gate=RunGate(paused=True))
    if page[0] is None:
        page = (dst.layout.svsm_base // PAGE, PAGE_ASSIGNED, None)
    with pytest.raises(InvalidParameter):
        dvm.write_pages([page])


def test_import_state_refuses_garbage_and_another_shape(pair) -> None:
    src, dst = pair
    dvm = MigratableVm(dst, gate=RunGate(paused=True))
    with pytest.raises(InvalidParameter):
        dvm.import_state(b"\x93garbage")
    svm = MigratableVm(src)
    svm.pause()
    with contextlib.ExitStack() as st:
        other = st.enter_context(boot(vcpus=2, memory="16M"))
        with pytest.raises(InvalidParameter):
            MigratableVm(other, gate=RunGate(paused=True)).import_state(svm.export_state())


def test_fence_retires_the_guest_for_good(pair) -> None:
    src, _ = pair
    vm = MigratableVm(src)
    gv = src.svsm.guest_vmpl
    vm.pause()
    vm.fence()
    with pytest.raises(GuestFenced):
        vm.resume()
    with pytest.raises(GuestFenced):
        with vm.gate.running():
            pass
    assert src.platform.vcpus[0].vmsa_sfn[gv] is None
    assert all(k == bytes(32) for k in src.psp_context.vmpcks[gv:])


def test_dirty_log_is_filtered_and_read_refuses_a_stolen_frame(pair) -> None:
    src, _ = pair
    vm = MigratableVm(src)
    hv = src.platform.hypervisor
    vm.start_dirty_log()
    gpa = src.guest.pool.take()
    src.guest.mem.write(gpa, b"x")
    src.platform.dirty_log.update({10**9, -5})  # a hypervisor reporting nonsense frames
    assert vm.dirty_frames() == {gpa // PAGE}
    assert vm.statistics().dirty_ignored == 2
    other = src.guest.pool.take()
    hv.remap(gpa // PAGE, other // PAGE)  # the host maps another guest page behind this frame
    with pytest.raises(InvalidRequest):
        vm.read_pages([gpa // PAGE])


@pytest.fixture(scope="module")
def fresh_destination():
    with boot(vcpus=1, memory="16M", seed=2) as dst:
        yield MigratableVm(dst, gate=RunGate(paused=True))


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(-5, 1 << 22), st.integers(0, (1 << 33) - 1),
                          st.one_of(st.none(), st.binary(min_size=0, max_size=8), st.just(b"\x07" * PAGE))),
                max_size=4))  # fmt: skip
def test_fuzz_write_pages_accepts_or_refuses_cleanly(fresh_destination, pages) -> None:
    dvm = fresh_destination
    before = {g: dvm.read_pages([g])[0] for g, _, _ in pages if 0 <= g < len(dvm.frames())}
    try:
        dvm.write_pages(pages)
    except InvalidParameter:
        # refused as a whole: nothing changed
        assert all(dvm.read_pages([g])[0] == p for g, p in before.items())
        return
    last = {gfn: (state, data) for gfn, state, data in pages}
    for gfn, (state, data) in last.items():  # what was accepted reads back as written
        readable = not state & PAGE_ASSIGNED or state & PAGE_VALIDATED
        want = data if readable and data != bytes(PAGE) else None
        assert dvm.read_pages([gfn])[0] == (gfn, state, want)


def test_write_pages_round_trip_of_valid_records(fresh_destination) -> None:
    dvm = fresh_destination
    recs = [(0x200, PAGE_ASSIGNED | PAGE_VALIDATED | (0x3 << 16), b"\x01" * PAGE), (0x201, 0, b"\x02" * PAGE),
            (0x202, PAGE_ASSIGNED, None), (0x203, PAGE_ASSIGNED | PAGE_VALIDATED, None)]
    dvm.write_pages(recs)
    assert dvm.read_pages([r[0] for r in recs]) == recs


def test_fence_record_survives_a_restart(pair, tmp_path) -> None:
    src, _ = pair
    rec = tmp_path / "fence.json"
    vm = MigratableVm(src, fence_record=rec)
    vm.pause()
    vm.fence()
    assert rec.exists() and src.measurement.hex() in rec.read_text()
    with pytest.raises(GuestFenced):
        MigratableVm(src, fence_record=rec)  # a restarted source refuses the guest


def test_the_inlined_chunk_digest_hashes_what_the_plain_one_does(pair) -> None:
    src, _ = pair
    gpa = src.guest.pool.take()
    src.guest.mem.write(gpa, b"\x17" * PAGE)
    vm = MigratableVm(src, threads=1)
    for c in range(vm.chunk_count()):
        assert vm._chunk_digest(c) == vm._chunk_digest_reference(c)


def test_keyed_digests_agree_under_one_key_and_catch_a_changed_page(pair) -> None:
    src, dst = pair
    svm, dvm = MigratableVm(src), MigratableVm(dst, gate=RunGate(paused=True))
    key = bytes(range(32))
    svm.set_digest_key(key)
    dvm.set_digest_key(key)
    gpa = src.guest.pool.take()
    src.guest.mem.write(gpa, b"\x42" * PAGE)
    _copy_all(svm, dvm)
    keyed = svm.digests()
    assert keyed == dvm.digests() and keyed != MigratableVm(src).digests()  # not the plain SHA-256 ones
    src.guest.mem.write(gpa + 8, b"\x43")
    assert [c for c, (a, b) in enumerate(zip(svm.digests(), dvm.digests())) if a != b] == [gpa // PAGE // 256]
    other = MigratableVm(src)
    other.set_digest_key(bytes(32))
    assert other.digests()[gpa // PAGE // 256] != svm.digests()[gpa // PAGE // 256]  # another key, another digest
    with pytest.raises(InvalidParameter):
        svm.set_digest_key(b"short")


def test_the_module_cannot_plant_a_vmpl0_vmsa_or_write_a_source(pair) -> None:
    """SECREVIEW 01:55: VMSA pages and machine state are checked like CREATE_VCPU; only a paused destination imports."""
    from svsm.kernel.hw import VMSA
    from svsm.kernel.migration._state import PAGE_VMSA

    src, dst = pair
    vm = MigratableVm(dst, gate=RunGate(paused=True))
    v = VMSA()
    v.vmpl, v.efer, v.sev_features = 0, 0x1D00, 1
    with pytest.raises(InvalidParameter):
        vm.write_pages([(0x180, PAGE_ASSIGNED | PAGE_VALIDATED | PAGE_VMSA, bytes(v))])
    assert not dst.platform.rmp.read(0x180).vmsa  # nothing applied
    svm = MigratableVm(src)
    with pytest.raises(InvalidRequest):  # a source (guest running) takes no pages
        svm.write_pages([(0x180, 0, None)])
    svm.pause()
    with pytest.raises(InvalidRequest):  # nor when paused: it is not a destination
        svm.write_pages([(0x180, 0, None)])
    blob = svm.export_state()
    st = decode_state(blob)
    forged = [vs if not vs.vmsa else type(vs)(**{**{f: getattr(vs, f) for f in vs.__struct_fields__}, "vmsa": bytes(v)})
              for vs in st.vcpus]  # fmt: skip
    from svsm.kernel.migration._state import encode_state

    bad = encode_state(type(st)(**{**{f: getattr(st, f) for f in st.__struct_fields__}, "vcpus": forged}))
    with pytest.raises(InvalidParameter):
        vm.import_state(bad)
    vm.import_state(blob)  # the genuine one is accepted
    vm.resume()
    with pytest.raises(InvalidRequest):  # after the commit the destination's guest runs: no more imports
        vm.import_state(blob)


def test_a_source_reuses_pre_hashed_chunks_only_while_the_trusted_record_vouches_for_them(pair) -> None:
    """Soundness: after any write or RMP change the cached digests equal a full fresh pass."""
    src, _ = pair
    vm = MigratableVm(src)
    assert vm.info()["trusted_writes"]
    vm.start_dirty_log()
    gpas = [src.guest.pool.take() for _ in range(3)]
    first = vm.digests()  # pre-hash while the guest runs
    assert first == MigratableVm(src).digests()
    src.guest.mem.write(gpas[0] + 100, b"guest write")  # C=1 write through the guest's view
    src.platform.hypervisor.get_dirty_log(clear=True)  # the hypervisor "forgets" it: irrelevant here
    got = vm.digests()
    assert got == MigratableVm(src).digests() and got != first
    assert vm._tracked is not None and vm._tracked.reused >= vm.chunk_count() - 1
    sfn = gpas[1] // PAGE  # an RMP change without any write (what a hypervisor RMPUPDATE does)
    src.platform.rmp.psmash(sfn & ~0x1FF)
    src.platform.firmware.set_rmp(sfn * PAGE, assigned=False)
    assert vm.digests() == MigratableVm(src).digests()
    src.platform.memory.write_raw(gpas[2] // PAGE, 0, b"host write")  # a raw (C=0) write
    assert vm.digests() == MigratableVm(src).digests()
    vm.stop_dirty_log()
    assert vm._tracked is None
