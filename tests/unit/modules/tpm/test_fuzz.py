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
