"""KDFa/KDFe against tpm2-pytss's independent implementation; deterministic primary derivation; EC math."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.modules.tpm._constants import ALG, ECC_CURVE
from svsm.modules.tpm._crypto import DRBG, derive_rsa, ec_mul, kdfa, kdfe, xor_obfuscate


@settings(max_examples=50, deadline=None)
@given(key=st.binary(min_size=1, max_size=64), label=st.sampled_from([b"ATH", b"CFB", b"STORAGE", b"INTEGRITY"]),
       u=st.binary(max_size=32), v=st.binary(max_size=32), bits=st.integers(8, 1024).map(lambda b: b - b % 8))
def test_kdfa_matches_pytss(key: bytes, label: bytes, u: bytes, v: bytes, bits: int) -> None:
    crypto = pytest.importorskip("tpm2_pytss.internal.crypto")
    assert kdfa(ALG.SHA256, key, label, u, v, bits) == crypto._kdfa(ALG.SHA256, key, label, u, v, bits)


@settings(max_examples=30, deadline=None)
@given(z=st.binary(min_size=32, max_size=32), u=st.binary(max_size=32), v=st.binary(max_size=32))
def test_kdfe_matches_pytss(z: bytes, u: bytes, v: bytes) -> None:
    crypto = pytest.importorskip("tpm2_pytss.internal.crypto")
    assert kdfe(ALG.SHA256, z, b"SECRET", u, v, 256) == crypto.kdfe(ALG.SHA256, z, b"SECRET\x00", u, v, 256)


def test_xor_obfuscation_is_an_involution() -> None:
    data = b"parameter bytes"
    once = xor_obfuscate(ALG.SHA256, b"k", b"n1", b"n2", data)
    assert once != data and xor_obfuscate(ALG.SHA256, b"k", b"n1", b"n2", once) == data


def test_derived_rsa_is_deterministic_and_valid() -> None:
    k1 = derive_rsa(DRBG(ALG.SHA256, b"s" * 32, b"t", b"c"), 1024, 65537)
    k2 = derive_rsa(DRBG(ALG.SHA256, b"s" * 32, b"t", b"c"), 1024, 65537)
    k3 = derive_rsa(DRBG(ALG.SHA256, b"S" * 32, b"t", b"c"), 1024, 65537)
    n = k1.private_numbers().public_numbers.n
    assert n == k2.private_numbers().public_numbers.n != k3.private_numbers().public_numbers.n
    assert n.bit_length() == 1024


@pytest.mark.parametrize("curve,cls", [(ECC_CURVE.NIST_P256, ec.SECP256R1), (ECC_CURVE.NIST_P384, ec.SECP384R1)])
def test_ec_mul_matches_ecdh(curve: int, cls: type) -> None:
    a = ec.derive_private_key(0x1234567, cls())
    b = ec.derive_private_key(0x7654321, cls())
    q = b.public_key().public_numbers()
    x, _y = ec_mul(curve, 0x1234567, q.x, q.y)
    assert x.to_bytes((x.bit_length() + 7) // 8, "big").rjust(len(a.exchange(ec.ECDH(), b.public_key())), b"\0") \
        == a.exchange(ec.ECDH(), b.public_key())
