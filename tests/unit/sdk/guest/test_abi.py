"""The guest-visible SVSM structures: layouts from the spec tables, round trips, and fuzzing
(any bytes give a frozen value or a RequestError with a result code, never anything else)."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk import InvalidFormat, InvalidParameter, RequestError, ResultCode, UnsupportedProtocol
from svsm.sdk.guest import _abi as abi


def test_rax_round_trip() -> None:
    rax = abi.request_rax(abi.SVSM_ATTEST_PROTOCOL, abi.SVSM_REQ_ATTEST_SINGLE_SERVICE)
    assert rax == 0x1_0000_0001
    assert abi.split_rax(rax) == (1, 1)


def test_calling_area_header() -> None:
    ca = abi.CallingAreaHeader.from_bytes(bytes([1, 1, 0, 9, 9, 9, 9, 9]))
    assert ca.pending and ca.mem_available == 1
    assert not abi.CallingAreaHeader.from_bytes(bytes([2]) + bytes(7)).pending
    with pytest.raises(InvalidFormat):
        abi.CallingAreaHeader.from_bytes(b"\1")


def test_pvalidate_entry_bits() -> None:
    e = abi.PvalidateEntry.from_raw(0x20_0000 | 0b1101)
    assert (e.gpa, e.huge, e.validate, e.ignore_cf) == (0x20_0000, True, True, True)
    assert e.to_raw() == 0x20_0000 | 0b1101
    assert abi.PvalidateEntry.from_raw(0x5000).validate is False


@pytest.mark.parametrize("raw", [0x1002, 0x1003, 0x1010, 0x1800, 0x1001])
def test_pvalidate_entry_rejects(raw: int) -> None:
    # size 2/3, reserved bits 4 and 11, and a 2 MiB entry at a 4 KiB-aligned GFN
    with pytest.raises(InvalidParameter) as ei:
        abi.PvalidateEntry.from_raw(raw)
    assert ei.value.code == ResultCode.INVALID_PARAMETER


def test_page_list_header_rules() -> None:
    assert abi.PageList.max_entries(0x1008) == 510
    assert abi.PageList.max_entries(0x1000) == 511
    ok = abi.PageList.from_bytes(abi.PageList.build([0x1000, 0x2000], 1), 0x1008)
    assert (ok.entries, ok.next) == (2, 1)
    assert ok.header_bytes() == struct.pack("<HHI", 2, 1, 0)
    for hdr, gpa in [
        (struct.pack("<HHI", 0, 0, 0), 0x1008),  # no entries
        (struct.pack("<HHI", 511, 0, 0), 0x1008),  # more than fit
        (struct.pack("<HHI", 2, 2, 0), 0x1008),  # next >= entries
        (struct.pack("<HHI", 1, 0, 0), 0x1004),  # misaligned list
    ]:
        with pytest.raises(InvalidParameter):
            abi.PageList.from_bytes(hdr, gpa)


def _op(**kw: int) -> abi.AttestServicesOp:
    args = dict(report_gpa=0x10000, report_size=0x1000, nonce_gpa=0x20040, nonce_size=64,
                manifest_gpa=0x30000, manifest_size=0x1000)  # fmt: skip
    args.update(kw)
    return abi.AttestServicesOp(**args)


def test_attest_op_round_trip() -> None:
    op = _op(certificate_gpa=0x40000, certificate_size=0x4000)
    raw = op.to_bytes()
    assert len(raw) == 0x40 and struct.unpack_from("<Q", raw, 0x30)[0] == 0x40000
    assert abi.AttestServicesOp.from_bytes(raw) == op
    single = abi.AttestSingleServiceOp(op, abi.VTPM_SERVICE_GUID)
    raw = single.to_bytes()
    assert len(raw) == 0x58 and raw[0x40:0x50] == abi.VTPM_SERVICE_GUID.bytes_le
    assert abi.AttestSingleServiceOp.from_bytes(raw) == single


@pytest.mark.parametrize(
    "kw",
    [dict(nonce_size=63), dict(nonce_gpa=0x20FF0), dict(report_gpa=0x10008), dict(manifest_gpa=0x30010),
     dict(certificate_size=0x4001, certificate_gpa=0x40000), dict(certificate_size=0x1000, certificate_gpa=0x40800)],
)  # fmt: skip
def test_attest_op_checks(kw: dict[str, int]) -> None:
    with pytest.raises(InvalidParameter):
        _op(**kw)


@pytest.mark.parametrize("offset", [0x0C, 0x1A, 0x1F, 0x2C, 0x3C, 0x3F])
def test_attest_op_reserved_bytes(offset: int) -> None:
    raw = bytearray(_op().to_bytes())
    raw[offset] = 1
    with pytest.raises(InvalidParameter):
        abi.AttestServicesOp.from_bytes(bytes(raw))


def test_single_op_reserved_and_version() -> None:
    raw = bytearray(abi.AttestSingleServiceOp(_op(), abi.VTPM_SERVICE_GUID).to_bytes())
    for off in (0x50, 0x54):
        bad = bytearray(raw)
        bad[off] = 1
        with pytest.raises(InvalidParameter):
            abi.AttestSingleServiceOp.from_bytes(bytes(bad))


def test_manifest_layout() -> None:
    g1, g2 = uuid.UUID(int=1), abi.VTPM_SERVICE_GUID
    m = abi.ServicesManifest(((g1, b"abc"), (g2, b"")))
    raw = m.to_bytes()
    assert raw[:16] == abi.SERVICES_MANIFEST_GUID.bytes_le
    assert struct.unpack_from("<II", raw, 16) == (24 + 48 + 3, 2)
    assert struct.unpack_from("<16sII", raw, 24) == (g1.bytes_le, 72, 3)
    assert raw[72:] == b"abc"
    assert abi.ServicesManifest.from_bytes(raw) == m
    assert m.get(g1) == b"abc"
    with pytest.raises(UnsupportedProtocol):
        m.get(uuid.UUID(int=7))
    with pytest.raises(InvalidFormat):
        abi.ServicesManifest(((g1, b""), (g1, b"")))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_manifest(raw: bytes) -> None:
    try:
        m = abi.ServicesManifest.from_bytes(raw)
    except RequestError as exc:
        assert exc.code == ResultCode.INVALID_FORMAT
    else:
        assert all(len(d) <= len(raw) for _, d in m.services)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.uuids(), st.binary(max_size=40)), max_size=5, unique_by=lambda t: t[0]))
def test_fuzz_manifest_round_trip(services: list[tuple[uuid.UUID, bytes]]) -> None:
    m = abi.ServicesManifest(tuple(services))
    assert abi.ServicesManifest.from_bytes(m.to_bytes()) == m


@settings(max_examples=300)
@given(st.binary(min_size=0x58, max_size=0x58))
def test_fuzz_attest_ops(raw: bytes) -> None:
    for parse in (abi.AttestServicesOp.from_bytes, abi.AttestSingleServiceOp.from_bytes):
        try:
            parse(raw)
        except RequestError as exc:
            assert exc.code == ResultCode.INVALID_PARAMETER


@settings(max_examples=300)
@given(st.integers(0, 2**64 - 1))
def test_fuzz_entries(raw: int) -> None:
    for cls in (abi.PvalidateEntry, abi.PageListEntry):
        try:
            e = cls.from_raw(raw)
        except RequestError as exc:
            assert exc.code == ResultCode.INVALID_PARAMETER
        else:
            assert cls.from_raw(e.to_raw()) == e


@settings(max_examples=300)
@given(st.binary(min_size=8, max_size=8), st.integers(0, 0x1FFF))
def test_fuzz_page_list_header(raw: bytes, gpa: int) -> None:
    try:
        pl = abi.PageList.from_bytes(raw, gpa)
    except RequestError as exc:
        assert exc.code == ResultCode.INVALID_PARAMETER
    else:
        assert 0 <= pl.next < pl.entries <= abi.PageList.max_entries(gpa)
