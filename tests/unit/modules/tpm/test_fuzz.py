"""Untrusted input: any bytes in -> a well-formed TPM response out, never an exception or internal failure."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svsm.modules.tpm import Tpm
from svsm.modules.tpm._dispatch import COMMANDS
from svsm.modules.tpm._marshal import Reader, TpmError
from svsm.modules.tpm._structs import read_public, read_sensitive_create
from svsm.modules.tpm._nv import read_nv_public

_TPM = Tpm()
_TPM.execute(bytes.fromhex("80010000000c000001440000"))
_CODES = sorted(COMMANDS)
_HANDLES = st.sampled_from([0x40000001, 0x40000007, 0x4000000B, 0x4000000A, 0x4000000C, 0x80000000, 0x81000001,
                            0x01000000, 0x02000000, 0x03000000, 0x40000009, 0, 23, 0xFFFFFFFF])


def _check(rsp: bytes) -> None:
    assert len(rsp) >= 10
    tag, size, rc = struct.unpack(">HII", rsp[:10])
    assert size == len(rsp)
    assert tag in (0x8001, 0x8002)
    if rc:
        assert len(rsp) == 10 and tag == 0x8001


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_random_bytes(data: bytes) -> None:
    _check(_TPM.execute(data))
    assert _TPM.statistics().internal_failures == 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cc=st.sampled_from(_CODES), handles=st.lists(_HANDLES, max_size=3), sessions=st.booleans(),
       auth=st.binary(max_size=40), body=st.binary(max_size=200))
def test_structured_commands(cc: int, handles: list[int], sessions: bool, auth: bytes, body: bytes) -> None:
    hb = b"".join(struct.pack(">I", h) for h in handles)
    if sessions:
        hb += struct.pack(">I", len(auth)) + auth
    tag = 0x8002 if sessions else 0x8001
    command = struct.pack(">HII", tag, 10 + len(hb) + len(body), cc) + hb + body
    t = Tpm(state=_TPM.save_state())  # fresh copy: keep examples independent
    t.execute(bytes.fromhex("80010000000c000001440000"))
    _check(t.execute(command))
    assert t.statistics().internal_failures == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_structure_parsers_raise_only_tpm_errors(data: bytes) -> None:
    for parse in (read_public, read_sensitive_create, read_nv_public):
        try:
            parse(Reader(data))
        except TpmError as e:
            assert 0 < e.rc < 0x1000


def _corpus() -> list[tuple[bytes, bytes]]:
    """(state before, command) for a realistic password-session workload, recorded through ESAPI."""
    import pytest
    pytest.importorskip("tpm2_pytss")
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_NV
    from tpm2_pytss.TCTI import PyTCTI
    from tpm2_pytss.types import (TPM2B_NV_PUBLIC, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPML_PCR_SELECTION,
                                  TPMS_NV_PUBLIC, TPMT_SIG_SCHEME, TPMT_SYM_DEF)
    from tpm_test_helpers import seeded_rng
    tpm = Tpm(rng=seeded_rng(3))
    out: list[tuple[bytes, bytes]] = []

    class Recorder(PyTCTI):
        def __init__(self) -> None:
            super().__init__(max_size=4096)
            self.rsp = b""

        def do_transmit(self, command: bytes) -> None:
            out.append((tpm.save_state(include_volatile=True), bytes(command)))
            self.rsp = tpm.execute(bytes(command))

        def do_receive(self, timeout: int) -> bytes:
            return self.rsp

    with ESAPI(Recorder()) as e:
        e.startup(0)
        srk = e.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc256:aes128cfb",
                                                                             objectAttributes=0x30072))[0]
        priv, pub, *_ = e.create(srk, TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256",
                                                                                     objectAttributes=0x40072))
        key = e.load(srk, priv, pub)
        digest, ticket = e.hash(b"x", TPM2_ALG.SHA256, ESYS_TR.OWNER)
        e.sign(key, digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket)
        e.quote(key, TPML_PCR_SELECTION.parse("sha256:0,1"), b"n", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        nv = e.nv_define_space(b"", TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=0x01000000, nameAlg=TPM2_ALG.SHA256, attributes=TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE, dataSize=8)))
        e.nv_write(nv, b"12345678", 0)
        e.nv_read(nv, 8, 0)
        p = e.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                 TPM2_ALG.SHA256)
        e.policy_pcr(p, b"", TPML_PCR_SELECTION.parse("sha256:0"))
        e.context_save(key)
        e.evict_control(ESYS_TR.OWNER, srk, 0x81000001)
    return out


_CORPUS: list[tuple[bytes, bytes]] = []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_commands(data: st.DataObject) -> None:
    if not _CORPUS:
        _CORPUS.extend(_corpus())
    state, command = data.draw(st.sampled_from(_CORPUS))
    buf = bytearray(command)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(10, len(buf) - 1)) if len(buf) > 10 else 0
        buf[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):  # keep the header size consistent so the mutation reaches the body
        buf[2:6] = struct.pack(">I", len(buf))
    t = Tpm(state=state)
    _check(t.execute(bytes(buf)))
    assert t.statistics().internal_failures == 0
