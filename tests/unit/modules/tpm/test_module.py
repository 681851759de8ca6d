"""The vTPM service module: SVSM_VTPM_QUERY/CMD semantics (coconut-svsm.md 2.5), state in storage, manifest."""

from __future__ import annotations

import logging
import random
import struct

import pytest

from svsm.sdk import InvalidFormat, InvalidParameter, InvalidRequest, ModuleContext, Request, load_manifest
from svsm.sdk.tpm import decode_vtpm_response, encode_vtpm_request

import svsm.modules.tpm as tpm_module
from tpm_test_helpers import cmd, pw
from svsm.modules.tpm import MANIFEST, Tpm, VtpmService, ek_template_rsa2048

STARTUP = bytes.fromhex("80010000000c000001440000")
GETRANDOM = bytes.fromhex("80010000000c0000017b0008")


class FakeSyscalls:
    """The syscalls the vTPM uses: random, time_ns, storage (a dict)."""

    def __init__(self, store: dict[str, bytes] | None = None, seed: int = 7) -> None:
        self.store = {} if store is None else store
        self._rnd = random.Random(seed)
        self.now_ns = 1_800_000_000 * 10**9
        self.puts = 0
        #: make storage_put fail (a full or broken store)
        self.fail_puts = False

    def random(self, size: int) -> bytes:
        return self._rnd.randbytes(size)

    def time_ns(self) -> int:
        return self.now_ns

    def storage_get(self, key: str) -> bytes | None:
        return self.store.get(key)

    def storage_put(self, key: str, value: bytes) -> None:
        if self.fail_puts:
            raise InvalidRequest("storage unavailable")
        self.puts += 1
        self.store[key] = value


def make_ctx(store: dict[str, bytes] | None = None, seed: int = 7) -> ModuleContext:
    return ModuleContext(FakeSyscalls(store, seed), MANIFEST, frozenset({"log", "random", "time", "storage"}),  # type: ignore[arg-type]
                         logging.getLogger("test.tpm"))


def page_for(command: bytes, locality: int = 0) -> bytes:
    return encode_vtpm_request(command, locality).ljust(4096, b"\xcc")


def call(svc: VtpmService, ctx: ModuleContext, command: bytes, locality: int = 0) -> bytes:
    reply = svc.handle(Request(protocol=2, call=1, rcx=0x1000, buffer=page_for(command, locality)), ctx)
    assert reply.buffer is not None and len(reply.buffer) == 4096
    return decode_vtpm_response(reply.buffer)


@pytest.fixture
def service() -> tuple[VtpmService, ModuleContext]:
    svc, ctx = VtpmService(), make_ctx()
    svc.start(ctx)
    return svc, ctx


def test_manifest_declares_protocol_2_and_the_vtpm_guid() -> None:
    m = load_manifest(tpm_module)
    assert m.name == "tpm" and m.service_guid == "c476f1eb-0123-45a5-9641-b4e7dde5bfe3"
    assert [c.call for c in m.protocols[0].calls] == [0, 1] and m.protocols[0].number == 2


def test_query(service) -> None:
    svc, ctx = service
    reply = svc.handle(Request(protocol=2, call=0), ctx)
    assert (reply.rcx, reply.rdx) == (1 << 8, 0)


def test_command_round_trip_and_not_started(service) -> None:
    svc, ctx = service
    assert call(svc, ctx, GETRANDOM)[6:10] == b"\x00\x00\x01\x00"  # TPM_RC_INITIALIZE: the guest sends Startup
    assert call(svc, ctx, STARTUP) == bytes.fromhex("80010000000a00000000")
    rsp = call(svc, ctx, GETRANDOM)
    assert rsp[6:10] == bytes(4) and struct.unpack(">H", rsp[10:12])[0] == 8


@pytest.mark.parametrize("page,exc", [
    (struct.pack("<IBI", 9, 0, 10).ljust(4096, b"\0"), InvalidParameter),      # platform command != 8
    (struct.pack("<IBI", 8, 1, 12) + STARTUP, InvalidParameter),               # locality != 0
    (struct.pack("<IBI", 8, 0, 4088).ljust(4096, b"\0"), InvalidParameter),    # inbuf_size > 4087
])
def test_bad_requests(service, page: bytes, exc: type) -> None:
    svc, ctx = service
    with pytest.raises(exc) as info:
        svc.handle(Request(protocol=2, call=1, rcx=0x1000, buffer=page.ljust(4096, b"\0")), ctx)
    assert info.value.code == 0x8000_0005


def test_rcx_zero_and_powered_off(service) -> None:
    svc, ctx = service
    with pytest.raises(InvalidParameter):
        svc.handle(Request(protocol=2, call=1, rcx=0, buffer=page_for(STARTUP)), ctx)
    svc.tpm.power_off()
    with pytest.raises(InvalidRequest) as info:
        svc.handle(Request(protocol=2, call=1, rcx=0x1000, buffer=page_for(STARTUP)), ctx)
    assert info.value.code == 0x8000_0006


def test_manifest_is_the_rsa_ek_public_and_stable_across_restarts() -> None:
    from svsm.modules.tpm import EK_CERT_RSA_INDEX
    store: dict[str, bytes] = {}
    svc, ctx = VtpmService(), make_ctx(store)
    svc.start(ctx)
    assert "state" in store and EK_CERT_RSA_INDEX not in svc.tpm.nv  # start stays cheap: EK made lazily
    manifest = svc.service_manifest(ctx)
    assert len(manifest) == 314 and manifest[:10] == ek_template_rsa2048().marshal()[:10]
    assert EK_CERT_RSA_INDEX in svc.tpm.nv
    again = VtpmService()
    ctx2 = make_ctx(store, seed=8)  # a different RNG, but the seeds come from storage
    again.start(ctx2)
    assert again.service_manifest(ctx2) == manifest
    fresh = VtpmService()
    ctx3 = make_ctx(seed=9)  # no stored state: a newly manufactured TPM has another EK
    fresh.start(ctx3)
    assert fresh.service_manifest(ctx3) != manifest


def test_first_command_provisions_the_ek_certificates(service) -> None:
    from svsm.modules.tpm import EK_CERT_ECC_INDEX
    svc, ctx = service
    call(svc, ctx, STARTUP)
    assert EK_CERT_ECC_INDEX in svc.tpm.nv and svc.manifest


def test_state_saved_after_state_changing_commands_only(service) -> None:
    svc, ctx = service
    sys = ctx.syscalls
    call(svc, ctx, STARTUP)
    puts = sys.puts
    call(svc, ctx, GETRANDOM)
    assert sys.puts == puts  # GetRandom changes nothing persistent
    change_auth = cmd(0x129, (0x40000001,), b"\x00\x02pw", pw())
    assert call(svc, ctx, change_auth)[6:10] == bytes(4)
    assert sys.puts == puts + 1


def test_save_and_restore_hooks_carry_volatile_state(service) -> None:
    svc, ctx = service
    call(svc, ctx, STARTUP)
    state = svc.save()
    other = VtpmService()
    other.start(make_ctx())
    other.restore(state, make_ctx())
    assert other.tpm.started and other.service_manifest(ctx) == svc.service_manifest(ctx)
    assert call(other, make_ctx(), GETRANDOM)[6:10] == bytes(4)
    with pytest.raises(InvalidFormat):
        other.restore(b"garbage", make_ctx())
    assert other.tpm.started  # the running TPM is kept


def test_package_hooks_register_and_serve_through_pluggy() -> None:
    from svsm.sdk._runtime import make_plugin_manager
    pm = make_plugin_manager()
    pm.register(tpm_module, name="tpm")
    pm.check_pending()  # every hook function matches a hookspec
    ctx = make_ctx()
    pm.hook.svsm_module_start(ctx=ctx)
    reply = pm.hook.svsm_handle_request(request=Request(protocol=2, call=1, rcx=0x1000, buffer=page_for(STARTUP)),
                                        ctx=ctx)
    assert decode_vtpm_response(reply.buffer) == bytes.fromhex("80010000000a00000000")
    manifest = pm.hook.svsm_service_manifest(ctx=ctx)
    assert manifest == tpm_module._module._SERVICE.manifest and len(manifest) == 314
    state = pm.hook.svsm_save_state(ctx=ctx)
    pm.hook.svsm_restore_state(state=state, ctx=ctx)
    pm.hook.svsm_module_stop(ctx=ctx)


def test_stale_checkpoint_does_not_roll_back_nv() -> None:
    store: dict[str, bytes] = {}
    svc, ctx = VtpmService(), make_ctx(store)
    svc.start(ctx)
    call(svc, ctx, STARTUP)
    checkpoint = svc.save()
    assert call(svc, ctx, cmd(0x129, (0x40000001,), b"\x00\x02pw", pw()))[6:10] == bytes(4)  # persisted
    restarted = VtpmService()  # crash: a new process loads storage, then the kernel offers the checkpoint
    restarted.start(make_ctx(store))
    restarted.restore(checkpoint, make_ctx(store))
    assert restarted.tpm.auths[0x40000001] == b"pw"
    fresh = VtpmService()  # migration destination: nothing in storage, the snapshot wins
    fresh.start(make_ctx(seed=5))
    fresh.restore(checkpoint, make_ctx(seed=5))
    assert fresh.tpm.started and fresh.service_manifest(ctx) == svc.service_manifest(ctx)


def test_restore_is_exact_and_reuses_the_carried_manifest(monkeypatch) -> None:
    svc, ctx = VtpmService(), make_ctx()
    svc.start(ctx)
    call(svc, ctx, STARTUP)
    extend = cmd(0x182, (16,), struct.pack(">IH", 1, 0x000B) + bytes(range(32)), pw())
    assert call(svc, ctx, extend)[6:10] == bytes(4)
    manifest = svc.service_manifest(ctx)
    snapshot = svc.save()
    assert svc.save() == snapshot  # nothing changed: same bytes
    dest_store: dict[str, bytes] = {}
    dest, dctx = VtpmService(), make_ctx(dest_store, seed=5)
    dest.start(dctx)

    def no_derivation(*args: object, **kw: object) -> None:
        raise AssertionError("the EK was derived again")
    monkeypatch.setattr(tpm_module._module, "create_ek", no_derivation)
    monkeypatch.setattr(tpm_module._module, "provision_ek", no_derivation)
    dest.restore(snapshot, dctx)
    assert dest.save() == snapshot  # MIGRATE: save(restore(x)) == x
    assert dest.service_manifest(dctx) == manifest
    assert call(dest, dctx, cmd(0x17E, (), struct.pack(">IHB3s", 1, 0x000B, 3, b"\x00\x00\x01")))[-32:] == \
        call(svc, ctx, cmd(0x17E, (), struct.pack(">IHB3s", 1, 0x000B, 3, b"\x00\x00\x01")))[-32:]
    restarted = VtpmService()  # the restored NV reached the destination's storage
    restarted.start(make_ctx(dest_store, seed=9))
    assert restarted.tpm.seeds == svc.tpm.seeds


def test_manifest_of_another_tpm_is_not_reused() -> None:
    svc, ctx = VtpmService(), make_ctx()
    svc.start(ctx)
    svc.manifest = b"\x01" * 314  # not this TPM's EK: the tag binds the manifest to the seed
    other, octx = VtpmService(), make_ctx(seed=5)
    other.start(octx)
    foreign = other.save()
    other.manifest = b"\x02" * 314
    snapshot = svc.save()
    spliced = snapshot[:10 + 314] + other.save()[10 + 314:10 + 314 + 32] + snapshot[10 + 314 + 32:]
    fresh = VtpmService()
    fresh.start(make_ctx(seed=6))
    fresh.restore(spliced, make_ctx(seed=6))
    assert fresh.manifest == b"" and fresh.tpm.seeds == svc.tpm.seeds
    fresh.restore(foreign, make_ctx(seed=6))  # a bare engine state (no manifest) still restores
    assert fresh.manifest == b"" and fresh.tpm.seeds == other.tpm.seeds
    with pytest.raises(InvalidFormat):
        fresh.restore(snapshot[:10 + 100], make_ctx(seed=6))


def test_storage_failure_rolls_the_command_back_with_nv_unavailable() -> None:
    store: dict[str, bytes] = {}
    svc, ctx = VtpmService(), make_ctx(store)
    svc.start(ctx)
    call(svc, ctx, STARTUP)
    extend = cmd(0x182, (16,), struct.pack(">IH", 1, 0x000B) + bytes(range(32)), pw())
    assert call(svc, ctx, extend)[6:10] == bytes(4)
    pcr16 = svc.tpm.pcrs.banks[0x000B][16]
    ctx.syscalls.fail_puts = True  # type: ignore[attr-defined]
    change_auth = cmd(0x129, (0x40000001,), b"\x00\x02pw", pw())
    assert call(svc, ctx, change_auth) == bytes.fromhex("80010000000a00000923")  # TPM_RC_NV_UNAVAILABLE
    assert svc.tpm.auths[0x40000001] == b"" and svc.storage_failures == 1  # the change did not happen
    assert svc.tpm.started and svc.tpm.pcrs.banks[0x000B][16] == pcr16  # volatile state kept
    assert call(svc, ctx, GETRANDOM)[6:10] == bytes(4)  # commands that write nothing still run
    ctx.syscalls.fail_puts = False  # type: ignore[attr-defined]
    assert call(svc, ctx, change_auth)[6:10] == bytes(4)
    assert Tpm(state=store["state"]).auths[0x40000001] == b"pw"


def test_storage_failure_keeps_dictionary_attack_state() -> None:
    store: dict[str, bytes] = {}
    svc, ctx = VtpmService(), make_ctx(store)
    svc.start(ctx)
    call(svc, ctx, STARTUP)
    ctx.syscalls.fail_puts = True  # type: ignore[attr-defined]
    bad = cmd(0x139, (0x4000000A,), b"", pw(b"wrong"))  # DictionaryAttackLockReset, wrong lockout auth
    assert call(svc, ctx, bad)[6:10] == struct.pack(">I", 0x98E)  # AUTH_FAIL (session 1), not rolled back
    assert svc.tpm.lockout_locked_at is not None and svc.tpm.dirty
    ctx.syscalls.fail_puts = False  # type: ignore[attr-defined]
    call(svc, ctx, GETRANDOM)  # the next command writes what is pending
    assert Tpm(state=store["state"]).lockout_locked_at is not None


def test_corrupt_stored_state_fails_the_start() -> None:
    from svsm.modules.tpm import StateError
    store = {"state": b"PYTPMST\x00" + bytes(60)}
    with pytest.raises(StateError):
        VtpmService().start(make_ctx(store))
    assert store["state"].startswith(b"PYTPMST\x00" + bytes(8))  # the stored state is left alone
