"""TPM crypto primitives: hashes by TPM_ALG_ID, KDFa/KDFe, AES-CFB, deterministic key derivation.

KDFa and KDFe follow tpm.md 7 byte for byte (SP800-108 counter HMAC / SP800-56A concat).
Primary keys are derived from a KDFa-seeded DRBG so the same seed and template always give
the same key (tpm.md 8).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 44 moved CFB/OFB to the decrepit namespace
    from cryptography.hazmat.decrepit.ciphers.modes import CFB, OFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB, OFB  # type: ignore[assignment]

from ._constants import ALG, ECC_CURVE, RC
from ._marshal import TpmError

__all__ = ["HASHES", "digest_size", "hash_new", "H", "hmac_digest", "kdfa", "kdfe", "aes_cfb",
           "xor_obfuscate", "CFB", "OFB", "DRBG", "derive_rsa", "derive_ecc", "CURVES", "curve_size", "strip_zeros"]

_BE32 = struct.Struct(">I").pack

#: TPM_ALG_ID -> hashlib name, digest size.
HASHES: dict[int, tuple[str, int]] = {
    ALG.SHA1: ("sha1", 20),
    ALG.SHA256: ("sha256", 32),
    ALG.SHA384: ("sha384", 48),
    ALG.SHA512: ("sha512", 64),
}

#: TPM_ECC_CURVE -> (cryptography curve class, coordinate size, order n).
CURVES: dict[int, tuple[type, int, int]] = {
    ECC_CURVE.NIST_P256: (ec.SECP256R1, 32,
                          0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    ECC_CURVE.NIST_P384: (ec.SECP384R1, 48,
                          0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973),
}


_HASH_CTORS = {alg: getattr(hashlib, name) for alg, (name, _size) in HASHES.items()}


def digest_size(alg: int) -> int:
    """Digest size of hash ``alg``.

    :raises TpmError: HASH if the algorithm is not a supported hash.
    """
    try:
        return HASHES[alg][1]
    except KeyError:
        raise TpmError(RC.HASH) from None


def curve_size(curve: int) -> int:
    """Coordinate size in bytes of ``curve``.

    :raises TpmError: CURVE if unsupported.
    """
    try:
        return CURVES[curve][1]
    except KeyError:
        raise TpmError(RC.CURVE) from None


def hash_new(alg: int) -> "hashlib._Hash":
    """A fresh hashlib object for TPM hash ``alg``."""
    try:
        return hashlib.new(HASHES[alg][0])
    except KeyError:
        raise TpmError(RC.HASH) from None


def H(alg: int, *parts: bytes) -> bytes:
    """H_alg(part1 || part2 || ...)."""
    try:
        return _HASH_CTORS[alg](b"".join(parts)).digest()
    except KeyError:
        raise TpmError(RC.HASH) from None


def hmac_digest(alg: int, key: bytes, *parts: bytes) -> bytes:
    """HMAC_alg(key, part1 || part2 || ...)."""
    return hmac.digest(key, b"".join(parts), HASHES[alg][0])  # one-shot C path


def _label(label: bytes) -> bytes:
    return label if label.endswith(b"\x00") else label + b"\x00"


def kdfa(alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa (SP800-108 counter mode, HMAC) as in tpm.md 7.

    :param alg: hash algorithm ID.
    :param key: HMAC key.
    :param label: ASCII label; one NUL is appended unless present.
    :param bits: number of output bits.
    :returns: ceil(bits/8) bytes.
    """
    name = HASHES[alg][0]
    lab = _label(label)
    tail = context_u + context_v + _BE32(bits)
    need = (bits + 7) // 8
    out = bytearray()
    i = 1
    while len(out) < need:
        out += hmac.digest(key, _BE32(i) + lab + tail, name)
        i += 1
    return bytes(out[:need])


def kdfe(alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe (SP800-56A concatenation KDF) as in tpm.md 7."""
    lab = _label(label)
    need = (bits + 7) // 8
    out = bytearray()
    i = 1
    while len(out) < need:
        out += H(alg, _BE32(i), z, lab, party_u, party_v)
        i += 1
    return bytes(out[:need])


def aes_cfb(key: bytes, iv: bytes, data: bytes, decrypt: bool) -> bytes:
    """AES-CFB128 over ``data`` (no padding; the last partial block is XORed)."""
    c = Cipher(algorithms.AES(key), CFB(iv))
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(data) + op.finalize()


def xor_obfuscate(alg: int, key: bytes, newer: bytes, older: bytes, data: bytes) -> bytes:
    """XOR parameter obfuscation: data ^ KDFa(alg, key, "XOR", newer, older, len*8)."""
    if not data:
        return data
    mask = kdfa(alg, key, b"XOR", newer, older, len(data) * 8)
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(data), "big")


def strip_zeros(auth: bytes) -> bytes:
    """authValue with trailing zero bytes removed (tpm.md 7)."""
    return auth.rstrip(b"\x00")


class DRBG:
    """Deterministic byte stream: KDFa(alg, seed, label, context, counter) blocks.

    Used only to derive primary keys; the exact construction need only be stable inside
    this engine (tpm.md 8).
    """

    __slots__ = ("_alg", "_seed", "_label", "_ctx", "_n")

    def __init__(self, alg: int, seed: bytes, label: bytes, context: bytes) -> None:
        self._alg, self._seed, self._label, self._ctx, self._n = alg, seed, label, context, 0

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        self._n += 1
        return kdfa(self._alg, self._seed, self._label, self._ctx, _BE32(self._n), n * 8)


_SMALL_PRIMES = [p for p in range(3, 4000) if all(p % d for d in range(2, int(p ** 0.5) + 1))]
_SIEVE_WIDTH = 2048  # odd candidates examined per DRBG draw


def _is_probable_prime(n: int, drbg: DRBG, rounds: int) -> bool:
    """Miller-Rabin with DRBG-chosen bases (deterministic for a given DRBG)."""
    d, s = n - 1, 0
    while not d & 1:
        d >>= 1
        s += 1
    nbytes = (n.bit_length() + 7) // 8
    for _ in range(rounds):
        a = 2 + int.from_bytes(drbg.read(nbytes), "big") % (n - 3)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(drbg: DRBG, bits: int, e: int) -> int:
    """The first probable prime p >= a DRBG-drawn start with gcd(p - 1, e) = 1.

    Candidates c + 2j are sieved by the small primes with bytearray slice assignment (C speed), so
    only survivors pay for a modular exponentiation.
    """
    nbytes = bits // 8
    while True:
        c = int.from_bytes(drbg.read(nbytes), "big") | (3 << (bits - 2)) | 1
        sieve = bytearray(b"\x01") * _SIEVE_WIDTH
        for p in _SMALL_PRIMES:
            # c + 2j = 0 (mod p)  <=>  j = -c * 2^-1 (mod p)
            start = (-c * ((p + 1) // 2)) % p
            sieve[start::p] = bytes(len(range(start, _SIEVE_WIDTH, p)))
        for j in range(_SIEVE_WIDTH):
            if not sieve[j]:
                continue
            cand = c + 2 * j
            if cand.bit_length() != bits:
                break
            if (cand - 1) % e == 0:
                continue
            if _is_probable_prime(cand, drbg, 1) and _is_probable_prime(cand, drbg, 4):
                return cand


def _rsa_from_primes(p: int, q: int, e: int) -> rsa.RSAPrivateKey:
    n = p * q
    d = pow(e, -1, (p - 1) * (q - 1))
    pub = rsa.RSAPublicNumbers(e, n)
    priv = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                 rsa.rsa_crt_iqmp(p, q), pub)
    return priv.private_key(unsafe_skip_rsa_key_validation=True)


def derive_rsa(drbg: DRBG, bits: int, e: int) -> rsa.RSAPrivateKey:
    """An RSA key of ``bits`` whose primes come from ``drbg`` (slow: pure-Python Miller-Rabin)."""
    while True:
        p = _prime(drbg, bits // 2, e)
        q = _prime(drbg, bits // 2, e)
        if p != q and (p * q).bit_length() == bits:
            return _rsa_from_primes(max(p, q), min(p, q), e)


def rsa_from_prime(n: int, p: int, e: int) -> rsa.RSAPrivateKey:
    """Rebuild an RSA private key from the modulus and one prime (TPMT_SENSITIVE holds p).

    :raises TpmError: KEY if ``p`` does not divide ``n``.
    """
    if p <= 1 or n % p:
        raise TpmError(RC.KEY)
    q = n // p
    try:
        return _rsa_from_primes(p, q, e)
    except ValueError:
        raise TpmError(RC.KEY) from None


def derive_ecc(drbg: DRBG, curve: int) -> ec.EllipticCurvePrivateKey:
    """An ECC key on ``curve`` with the scalar from ``drbg``."""
    cls, size, order = CURVES[curve]
    while True:
        d = int.from_bytes(drbg.read(size + 8), "big") % order
        if d:
            return ec.derive_private_key(d, cls())


#: NIST curve field primes and b coefficients (a = -3), FIPS 186-4 D.1.2.3 / D.1.2.4.
_EC_FIELD: dict[int, tuple[int, int]] = {
    ECC_CURVE.NIST_P256: (2**256 - 2**224 + 2**192 + 2**96 - 1,
                          0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B),
    ECC_CURVE.NIST_P384: (2**384 - 2**128 - 2**96 + 2**32 - 1,
                          0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF),
}


def on_curve(curve: int, x: int, y: int) -> bool:
    """Whether (x, y) satisfies y^2 = x^3 - 3x + b (mod p)."""
    p, b = _EC_FIELD[curve]
    return 0 <= x < p and 0 <= y < p and (y * y - (x * x * x - 3 * x + b)) % p == 0


def ec_mul(curve: int, k: int, x: int, y: int) -> tuple[int, int]:
    """k*(x, y) on a NIST curve (Jacobian double-and-add; used for ECDH Z points with both coordinates).

    :raises TpmError: ECC_POINT if the point is not on the curve or the result is infinity.
    """
    if not on_curve(curve, x, y):
        raise TpmError(RC.ECC_POINT)
    p = _EC_FIELD[curve][0]

    def dbl(P: tuple[int, int, int]) -> tuple[int, int, int]:
        X, Y, Z = P
        if not Y:
            return (0, 1, 0)
        zz = Z * Z % p
        m = 3 * (X - zz) * (X + zz) % p
        yy = Y * Y % p
        s = 4 * X * yy % p
        nx = (m * m - 2 * s) % p
        return (nx, (m * (s - nx) - 8 * yy * yy) % p, 2 * Y * Z % p)

    def add(P: tuple[int, int, int], Q: tuple[int, int, int]) -> tuple[int, int, int]:
        if not P[2]:
            return Q
        if not Q[2]:
            return P
        X1, Y1, Z1 = P
        X2, Y2, Z2 = Q
        z1z1, z2z2 = Z1 * Z1 % p, Z2 * Z2 % p
        u1, u2 = X1 * z2z2 % p, X2 * z1z1 % p
        s1, s2 = Y1 * Z2 * z2z2 % p, Y2 * Z1 * z1z1 % p
        if u1 == u2:
            return dbl(P) if s1 == s2 else (0, 1, 0)
        h, r = (u2 - u1) % p, (s2 - s1) % p
        hh = h * h % p
        hhh = h * hh % p
        v = u1 * hh % p
        nx = (r * r - hhh - 2 * v) % p
        return (nx, (r * (v - nx) - s1 * hhh) % p, Z1 * Z2 * h % p)

    R = (0, 1, 0)
    Pt = (x, y, 1)
    for bit in bin(k)[2:]:
        R = dbl(R)
        if bit == "1":
            R = add(R, Pt)
    if not R[2]:
        raise TpmError(RC.ECC_POINT)
    zi = pow(R[2], -1, p)
    return (R[0] * zi * zi % p, R[1] * zi * zi * zi % p)
