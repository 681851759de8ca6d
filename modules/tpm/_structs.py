"""TPMT_PUBLIC and the other parameter structures the commands take (tpm.md 6).

Each ``read_*`` function unmarshals one structure from a :class:`Reader`, checking
algorithm selectors and sizes and raising the structure's TPM_RC (the dispatcher adds the
parameter number).  :class:`Public` marshals back to the exact bytes, which the Name hashes.
"""

from __future__ import annotations

from ._constants import ALG, ECC_CURVE, RC, TPMA_OBJECT
from ._crypto import CURVES, HASHES
from ._marshal import Reader, TpmError, tpm2b, u16, u32

__all__ = ["Public", "read_public", "read_public_2b", "read_sym_def", "read_sym_def_object",
           "read_sig_scheme", "read_pcr_selection", "marshal_pcr_selection", "read_sensitive_create",
           "read_ticket", "read_signature", "read_hash_alg", "SIG_SCHEMES", "MAX_DIGEST", "MAX_RSA_BYTES"]

MAX_DIGEST = 64
MAX_RSA_BYTES = 384
MAX_ECC_BYTES = 48
SYM_KEY_BITS = (128, 192, 256)
SYM_MODES = (ALG.CFB, ALG.CTR, ALG.OFB, ALG.CBC, ALG.ECB, ALG.NULL)
RSA_SCHEMES = (ALG.NULL, ALG.RSASSA, ALG.RSAPSS, ALG.RSAES, ALG.OAEP)
ECC_SCHEMES = (ALG.NULL, ALG.ECDSA, ALG.ECDH, ALG.ECSCHNORR, ALG.ECDAA)
SIG_SCHEMES = (ALG.RSASSA, ALG.RSAPSS, ALG.ECDSA, ALG.ECSCHNORR, ALG.ECDAA, ALG.HMAC)
KDFS = (ALG.KDF1_SP800_56A, ALG.KDF2, ALG.KDF1_SP800_108)
RSA_KEY_BITS = (2048, 3072)


def read_hash_alg(r: Reader, allow_null: bool = False) -> int:
    """TPMI_ALG_HASH (+NULL when allowed).

    :raises TpmError: HASH.
    """
    a = r.u16()
    if a in HASHES or (allow_null and a == ALG.NULL):
        return a
    raise TpmError(RC.HASH)


def read_sym_def_object(r: Reader) -> tuple[int, int, int]:
    """TPMT_SYM_DEF_OBJECT -> (alg, keyBits, mode); NULL gives (NULL, 0, NULL)."""
    alg = r.u16()
    if alg == ALG.NULL:
        return (ALG.NULL, 0, ALG.NULL)
    if alg != ALG.AES:
        raise TpmError(RC.SYMMETRIC)
    bits = r.u16()
    if bits not in SYM_KEY_BITS:
        raise TpmError(RC.KEY_SIZE)
    mode = r.u16()
    if mode not in SYM_MODES:
        raise TpmError(RC.MODE)
    return (alg, bits, mode)


def read_sym_def(r: Reader) -> tuple[int, int, int]:
    """TPMT_SYM_DEF (sessions): like the object form, but XOR carries a hash and no mode."""
    alg = r.u16()
    if alg == ALG.XOR:
        return (ALG.XOR, read_hash_alg(r), ALG.NULL)
    r.pos -= 2
    return read_sym_def_object(r)


def marshal_sym(sym: tuple[int, int, int]) -> bytes:
    """Inverse of :func:`read_sym_def_object` / :func:`read_sym_def`."""
    alg, bits, mode = sym
    if alg == ALG.NULL:
        return u16(ALG.NULL)
    if alg == ALG.XOR:
        return u16(alg) + u16(bits)
    return u16(alg) + u16(bits) + u16(mode)


def _read_scheme(r: Reader, allowed: tuple[int, ...]) -> tuple[int, int, int]:
    alg = r.u16()
    if alg not in allowed:
        raise TpmError(RC.SCHEME)
    if alg in (ALG.NULL, ALG.RSAES):
        return (alg, ALG.NULL, 0)
    h = read_hash_alg(r)
    count = r.u16() if alg == ALG.ECDAA else 0
    return (alg, h, count)


def _marshal_scheme(s: tuple[int, int, int]) -> bytes:
    alg, h, count = s
    if alg in (ALG.NULL, ALG.RSAES):
        return u16(alg)
    return u16(alg) + u16(h) + (u16(count) if alg == ALG.ECDAA else b"")


def read_sig_scheme(r: Reader) -> tuple[int, int, int]:
    """TPMT_SIG_SCHEME -> (alg, hash, count)."""
    return _read_scheme(r, SIG_SCHEMES + (ALG.NULL,))


class Public:
    """A TPMT_PUBLIC, marshalled lazily and cached (the Name covers these bytes)."""

    __slots__ = ("type", "name_alg", "attrs", "policy", "sym", "scheme", "key_bits", "exponent",
                 "curve", "kdf", "unique", "_bytes")

    def __init__(self, type: int, name_alg: int, attrs: int, policy: bytes,
                 sym: tuple[int, int, int] = (ALG.NULL, 0, ALG.NULL),
                 scheme: tuple[int, int, int] = (ALG.NULL, ALG.NULL, 0), key_bits: int = 0,
                 exponent: int = 0, curve: int = 0, kdf: tuple[int, int, int] = (ALG.NULL, ALG.NULL, 0),
                 unique: bytes | tuple[bytes, bytes] = b"") -> None:
        self.type, self.name_alg, self.attrs, self.policy = type, name_alg, attrs, policy
        self.sym, self.scheme, self.key_bits, self.exponent = sym, scheme, key_bits, exponent
        self.curve, self.kdf, self.unique = curve, kdf, unique
        self._bytes: bytes | None = None

    def copy(self, **changes: object) -> "Public":
        """A modified copy (the cached bytes are recomputed)."""
        p = Public(self.type, self.name_alg, self.attrs, self.policy, self.sym, self.scheme,
                   self.key_bits, self.exponent, self.curve, self.kdf, self.unique)
        for k, v in changes.items():
            setattr(p, k, v)
        return p

    def parms(self) -> bytes:
        """TPMU_PUBLIC_PARMS bytes (also TPMT_PUBLIC_PARMS without the type)."""
        t = self.type
        if t == ALG.RSA:
            return marshal_sym(self.sym) + _marshal_scheme(self.scheme) + u16(self.key_bits) + u32(self.exponent)
        if t == ALG.ECC:
            return (marshal_sym(self.sym) + _marshal_scheme(self.scheme) + u16(self.curve)
                    + _marshal_scheme(self.kdf))
        if t == ALG.KEYEDHASH:
            alg, h, kdf = self.scheme
            if alg == ALG.NULL:
                return u16(alg)
            if alg == ALG.XOR:
                return u16(alg) + u16(h) + u16(kdf)
            return u16(alg) + u16(h)
        return marshal_sym(self.sym)

    def marshal(self) -> bytes:
        """The TPMT_PUBLIC bytes."""
        if self._bytes is None:
            if self.type == ALG.ECC:
                x, y = self.unique  # type: ignore[misc]
                uniq = tpm2b(x) + tpm2b(y)
            else:
                uniq = tpm2b(self.unique)  # type: ignore[arg-type]
            self._bytes = (u16(self.type) + u16(self.name_alg) + u32(self.attrs) + tpm2b(self.policy)
                           + self.parms() + uniq)
        return self._bytes

    @property
    def exp(self) -> int:
        """The RSA public exponent (0 means 65537)."""
        return self.exponent or 65537


def read_parms(r: Reader, type: int) -> dict:
    """TPMU_PUBLIC_PARMS for ``type`` as keyword arguments of :class:`Public`."""
    if type == ALG.RSA:
        sym = read_sym_def_object(r)
        scheme = _read_scheme(r, RSA_SCHEMES)
        bits = r.u16()
        if bits not in RSA_KEY_BITS:
            raise TpmError(RC.KEY_SIZE)
        exponent = r.u32()
        if exponent not in (0, 65537) and (exponent < 3 or not exponent & 1):
            raise TpmError(RC.VALUE)
        return {"sym": sym, "scheme": scheme, "key_bits": bits, "exponent": exponent}
    if type == ALG.ECC:
        sym = read_sym_def_object(r)
        scheme = _read_scheme(r, ECC_SCHEMES)
        curve = r.u16()
        if curve not in CURVES:
            raise TpmError(RC.CURVE)
        kdf = _read_scheme(r, KDFS + (ALG.NULL,))
        if kdf[0] != ALG.NULL:
            raise TpmError(RC.KDF)
        return {"sym": sym, "scheme": scheme, "curve": curve, "kdf": kdf}
    if type == ALG.KEYEDHASH:
        alg = r.u16()
        if alg == ALG.NULL:
            return {"scheme": (ALG.NULL, ALG.NULL, 0)}
        if alg == ALG.HMAC:
            return {"scheme": (alg, read_hash_alg(r), 0)}
        if alg == ALG.XOR:
            h = read_hash_alg(r)
            kdf = r.u16()
            if kdf not in KDFS:
                raise TpmError(RC.KDF)
            return {"scheme": (alg, h, kdf)}
        raise TpmError(RC.SCHEME)
    if type == ALG.SYMCIPHER:
        return {"sym": read_sym_def_object(r)}
    raise TpmError(RC.TYPE)


def read_public(r: Reader, allow_null_name: bool = False) -> Public:
    """TPMT_PUBLIC (checks selectors and reserved bits, not the attribute combination)."""
    t = r.u16()
    if t not in (ALG.RSA, ALG.ECC, ALG.KEYEDHASH, ALG.SYMCIPHER):
        raise TpmError(RC.TYPE)
    name_alg = read_hash_alg(r, allow_null=allow_null_name)
    attrs = r.u32()
    if attrs & TPMA_OBJECT.RESERVED:
        raise TpmError(RC.RESERVED_BITS)
    policy = r.tpm2b(MAX_DIGEST)
    kw = read_parms(r, t)
    if t == ALG.RSA:
        unique: bytes | tuple[bytes, bytes] = r.tpm2b(MAX_RSA_BYTES)
    elif t == ALG.ECC:
        unique = (r.tpm2b(MAX_ECC_BYTES), r.tpm2b(MAX_ECC_BYTES))
    else:
        unique = r.tpm2b(MAX_DIGEST)
    return Public(t, name_alg, attrs, policy, unique=unique, **kw)


def read_public_2b(r: Reader, allow_null_name: bool = False) -> Public:
    """TPM2B_PUBLIC: a size of 0 is SIZE; the inner structure must fill the size exactly."""
    sub = r.sized()
    if sub.end == sub.pos:
        raise TpmError(RC.SIZE)
    pub = read_public(sub, allow_null_name)
    sub.done()
    return pub


def read_sensitive_create(r: Reader) -> tuple[bytes, bytes]:
    """TPM2B_SENSITIVE_CREATE -> (userAuth, data)."""
    sub = r.sized()
    auth = sub.tpm2b(MAX_DIGEST)
    data = sub.tpm2b(256)
    sub.done()
    return auth, data


def read_pcr_selection(r: Reader) -> list[tuple[int, int]]:
    """TPML_PCR_SELECTION -> [(hash, bitmap)] with PCR n at bit n of the bitmap."""
    count = r.u32()
    if count > 16:
        raise TpmError(RC.SIZE)
    out = []
    for _ in range(count):
        h = read_hash_alg(r)
        size = r.u8()
        if size > 4:
            raise TpmError(RC.VALUE)
        bits = int.from_bytes(r.raw(size), "little")
        out.append((h, bits))
    return out


def marshal_pcr_selection(sel: list[tuple[int, int]]) -> bytes:
    """Inverse of :func:`read_pcr_selection` with sizeofSelect = 3 (24 PCRs)."""
    return u32(len(sel)) + b"".join(u16(h) + b"\x03" + (bits & 0xFFFFFF).to_bytes(3, "little")
                                    for h, bits in sel)


def read_ticket(r: Reader) -> tuple[int, int, bytes]:
    """TPMT_TK_* -> (tag, hierarchy, digest)."""
    return (r.u16(), r.u32(), r.tpm2b(MAX_DIGEST))


def read_signature(r: Reader) -> tuple[int, int, bytes | tuple[bytes, bytes]]:
    """TPMT_SIGNATURE -> (sigAlg, hash, sig bytes or (r, s))."""
    alg = r.u16()
    if alg in (ALG.RSASSA, ALG.RSAPSS):
        return (alg, read_hash_alg(r), r.tpm2b(MAX_RSA_BYTES))
    if alg in (ALG.ECDSA, ALG.ECSCHNORR, ALG.ECDAA):
        h = read_hash_alg(r)
        return (alg, h, (r.tpm2b(MAX_ECC_BYTES), r.tpm2b(MAX_ECC_BYTES)))
    if alg == ALG.HMAC:
        h = read_hash_alg(r)
        return (alg, h, r.raw(HASHES[h][1]))
    if alg == ALG.NULL:
        return (alg, ALG.NULL, b"")
    raise TpmError(RC.SCHEME)


EC_CURVE_IDS = (ECC_CURVE.NIST_P256, ECC_CURVE.NIST_P384)
