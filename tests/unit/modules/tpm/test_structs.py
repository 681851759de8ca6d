"""TPMT_PUBLIC and parameter structures: round trips, selector checks, PCR selections."""

from __future__ import annotations

import pytest

from svsm.modules.tpm import TpmError
from svsm.modules.tpm._ek import ek_template_ecc256, ek_template_rsa2048
from svsm.modules.tpm._marshal import Reader
from svsm.modules.tpm._structs import (marshal_pcr_selection, read_pcr_selection, read_public, read_sig_scheme,
                                       read_sym_def)


@pytest.mark.parametrize("raw", [
    ek_template_rsa2048().marshal(), ek_template_ecc256().marshal(),
    bytes.fromhex("0008000b00000052000000100000"),                      # sealed data object
    bytes.fromhex("0008" "000b" "00040072" "0000" "0005" "000b" "0000"),  # HMAC key
    bytes.fromhex("0025000b000600720000000600800043" "0000"),           # AES-128-CFB key
])
def test_public_round_trips_byte_exact(raw: bytes) -> None:
    r = Reader(raw)
    assert read_public(r).marshal() == raw
    r.done()


@pytest.mark.parametrize("raw,rc", [
    ("0099" "000b" "00000052" "0000" "0010" "0000", 0x08A),                          # TYPE
    ("0008" "0099" "00000052" "0000" "0010" "0000", 0x083),                          # HASH
    ("0008" "000b" "00000152" "0000" "0010" "0000", 0x0A1),                          # RESERVED_BITS
    ("0001" "000b" "00030072" "0000" "0006008000430010" "0400" "00000000" "0000", 0x087),  # RSA-1024: KEY_SIZE
    ("0023" "000b" "00030072" "0000" "0006008000430010" "0009" "0010" "0000" "0000", 0x0A6),  # curve: CURVE
])
def test_public_selector_errors(raw: str, rc: int) -> None:
    with pytest.raises(TpmError) as e:
        read_public(Reader(bytes.fromhex(raw)))
    assert e.value.rc == rc


def test_sym_def_modes_and_xor() -> None:
    assert read_sym_def(Reader(bytes.fromhex("000a000b"))) == (0x000A, 0x000B, 0x0010)
    assert read_sym_def(Reader(bytes.fromhex("000600800043"))) == (0x0006, 128, 0x0043)
    for raw, rc in (("000600400043", 0x087), ("000600800099", 0x089), ("0003", 0x096)):
        with pytest.raises(TpmError) as e:
            read_sym_def(Reader(bytes.fromhex(raw)))
        assert e.value.rc == rc


def test_sig_scheme_and_pcr_selection() -> None:
    assert read_sig_scheme(Reader(bytes.fromhex("0018000b"))) == (0x0018, 0x000B, 0)
    with pytest.raises(TpmError) as e:
        read_sig_scheme(Reader(bytes.fromhex("0017000b")))  # OAEP is no signing scheme
    assert e.value.rc == 0x092
    sel = read_pcr_selection(Reader(bytes.fromhex("00000002" "000b03030000" "000401ff")))
    assert sel == [(0x000B, 0x3), (0x0004, 0xFF)]
    assert marshal_pcr_selection(sel) == bytes.fromhex("00000002" "000b03030000" "000403ff0000")
    with pytest.raises(TpmError) as e:
        read_pcr_selection(Reader(bytes.fromhex("00000001000b05ffffffffff")))
    assert e.value.rc == 0x084
