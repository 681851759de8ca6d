"""ID block / ID auth for LAUNCH_FINISH: layouts, checks, and interop with sev-snp-measure's
``snp-create-id-block`` (its blocks are accepted, its key digests match ours)."""

from __future__ import annotations

import base64
import ctypes
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from svsm.kernel.hw.psp import (
    ID_AUTH,
    ID_BLOCK,
    Chip,
    FirmwareImage,
    FwError,
    PspError,
    SnpFirmware,
    build_id_block,
    build_image,
    calc_launch_digest,
    key_digest,
    launch,
    launch_plan,
)
from svsm.sdk.attestation import AttestationReport, load_chain, verify_report
from svsm.sdk.testing import require_module

IMAGE = FirmwareImage.parse(build_image(0x4000, sections=[(0x800000, 0x1000, 2)]))
MEASUREMENT = calc_launch_digest(IMAGE, vcpus=1, vcpu_sig=1)
ID_KEY = ec.derive_private_key(0x1D, ec.SECP384R1())
AUTHOR_KEY = ec.derive_private_key(0xA7, ec.SECP384R1())


@pytest.fixture(scope="session")
def chip(tmp_path_factory: pytest.TempPathFactory) -> Chip:
    return Chip.load_or_create(tmp_path_factory.getbasetemp() / "psp-chip")


def _launch(chip: Chip, **kw: object) -> tuple[SnpFirmware, object]:
    fw = SnpFirmware(chip)
    res = launch(fw, launch_plan(IMAGE, vcpus=1, vcpu_sig=1), **kw)  # type: ignore[arg-type]
    return fw, res


def test_layouts() -> None:
    assert ctypes.sizeof(ID_BLOCK) == 0x60 and ctypes.sizeof(ID_AUTH) == 0x1000


def test_id_block_sets_report_fields(chip: Chip) -> None:
    blk, auth = build_id_block(MEASUREMENT, ID_KEY, AUTHOR_KEY, family_id=b"F" * 16, image_id=b"I" * 16, guest_svn=3)
    fw, res = _launch(chip, id_block=blk, id_auth=auth)
    r = verify_report(fw.build_report(res.ctx, bytes(64), 0), load_chain(*chip.chain_pem()))  # type: ignore[attr-defined]
    assert (r.family_id, r.image_id, r.guest_svn) == (b"F" * 16, b"I" * 16, 3)
    assert r.id_key_digest == key_digest(ID_KEY.public_key())
    assert r.author_key_digest == key_digest(AUTHOR_KEY.public_key()) and r.key_info & 1  # AUTHOR_KEY_EN
    blk, auth = build_id_block(MEASUREMENT, ID_KEY)
    fw, res = _launch(chip, id_block=blk, id_auth=auth)
    r = AttestationReport.from_bytes(fw.build_report(res.ctx, bytes(64), 0))  # type: ignore[attr-defined]
    assert r.author_key_digest == bytes(48) and not r.key_info & 1


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda b, a: (b[:0x30] + b"X" + b[0x31:], a), FwError.BAD_SIGNATURE),  # signed bytes changed
        (lambda b, a: (b, a[:0x40] + bytes([a[0x40] ^ 1]) + a[0x41:]), FwError.BAD_SIGNATURE),  # signature
        (lambda b, a: (b, a[:0x680] + bytes([a[0x680] ^ 1]) + a[0x681:]), FwError.BAD_SIGNATURE),  # author sig
        (lambda b, a: (b, a[:0x240] + b"\x03" + a[0x241:]), FwError.INVALID_PARAM),  # curve
        (lambda b, a: (b[:-1], a), FwError.INVALID_PARAM),  # size
    ],
)
def test_bad_id_blocks_are_refused(chip: Chip, mutate, status: FwError) -> None:  # type: ignore[no-untyped-def]
    blk, auth = mutate(*build_id_block(MEASUREMENT, ID_KEY, AUTHOR_KEY))
    with pytest.raises(PspError) as info:
        _launch(chip, id_block=blk, id_auth=auth)
    assert info.value.fw_error is status


def test_wrong_measurement_or_policy(chip: Chip) -> None:
    blk, auth = build_id_block(bytes(48), ID_KEY)
    with pytest.raises(PspError) as info:
        _launch(chip, id_block=blk, id_auth=auth)
    assert info.value.fw_error is FwError.BAD_MEASUREMENT
    blk, auth = build_id_block(MEASUREMENT, ID_KEY, policy=0x30000 | 1 << 19)
    with pytest.raises(PspError) as info:
        _launch(chip, id_block=blk, id_auth=auth)
    assert info.value.fw_error is FwError.POLICY_FAILURE


def test_sev_snp_measure_id_block_is_accepted(chip: Chip, tmp_path: pathlib.Path) -> None:
    require_module("sevsnpmeasure")
    from sevsnpmeasure.id_block import snp_calc_id_block

    pem = serialization.Encoding.PEM
    for name, key in (("id.pem", ID_KEY), ("author.pem", AUTHOR_KEY)):
        (tmp_path / name).write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    out = snp_calc_id_block(MEASUREMENT, str(tmp_path / "id.pem"), str(tmp_path / "author.pem"))
    first, id_hash, author_hash = out.splitlines()
    blk_b64, auth_b64 = (part.split("=", 1)[1] for part in first.split(","))
    blk, auth = base64.b64decode(blk_b64), base64.b64decode(auth_b64)
    assert blk == build_id_block(MEASUREMENT, ID_KEY)[0]  # same ID block bytes (signatures are randomized)
    fw, res = _launch(chip, id_block=blk, id_auth=auth)
    r = AttestationReport.from_bytes(fw.build_report(res.ctx, bytes(64), 0))  # type: ignore[attr-defined]
    assert r.id_key_digest == base64.b64decode(id_hash.split(": ")[1])
    assert r.author_key_digest == base64.b64decode(author_hash.split(": ")[1])
    assert r.policy == 0x30000


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0x60, max_size=0x60), st.binary(min_size=0, max_size=0x1000), st.booleans())
def test_fuzz_id_block_parser(blk: bytes, auth: bytes, author: bool) -> None:
    from svsm.kernel.hw.psp._idblock import IdBlockError, parse_id_block

    with pytest.raises(IdBlockError):
        parse_id_block(blk, auth.ljust(0x1000, b"\0") if author else auth, measurement=MEASUREMENT, policy=0x30000,
                       author_key_en=author)  # fmt: skip
