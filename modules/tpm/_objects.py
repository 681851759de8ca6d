"""Objects: keys and data blobs, their sensitive areas, Names, protection under a parent (tpm.md 8).

TPM2B_PRIVATE format (read only by this engine, tpm.md 8): ``TPM2B outerHMAC | TPM2B iv |
AES-CFB(symKey, iv, u16 size || TPMT_SENSITIVE)`` with symKey = KDFa(parent nameAlg, parent
seedValue, "STORAGE", Name(child)) and outerHMAC = HMAC(KDFa(..., "INTEGRITY"), iv2B || enc || Name).
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ._constants import ALG, RC, RH, TPMA_OBJECT
from ._crypto import (CURVES, DRBG, H, HASHES, aes_cfb, derive_ecc, derive_rsa, hmac_digest, kdfa,
                      rsa_from_prime)
from ._marshal import Reader, TpmError, tpm2b, u16, u32
from ._structs import Public, read_public

__all__ = ["TpmObject", "compute_name", "wrap_sensitive", "unwrap_sensitive", "marshal_sensitive",
           "read_sensitive", "derive_primary", "generate_object", "validate_public", "key_from_public"]

KIND_OBJECT, KIND_HASH_SEQ, KIND_HMAC_SEQ, KIND_EVENT_SEQ = 0, 1, 2, 3
#: a sequence holding more data than this cannot be context-saved (its blob must stay < 2 KiB)
SEQ_SAVE_LIMIT = 1536


def compute_name(pub: Public) -> bytes:
    """Name = nameAlg || H_nameAlg(TPMT_PUBLIC); a NULL nameAlg gives just the 2-byte alg."""
    if pub.name_alg == ALG.NULL:
        return u16(ALG.NULL)
    return u16(pub.name_alg) + H(pub.name_alg, pub.marshal())


class TpmObject:
    """A loaded (transient or persistent) object or a hash/HMAC/event sequence."""

    __slots__ = ("public", "name", "qn", "hierarchy", "auth", "seed", "sens", "_key", "kind", "seq_alg",
                 "seq_data", "seq_prefix", "_seq_states", "public_only", "evict_handle")

    def __init__(self, public: Public, hierarchy: int, auth: bytes, seed: bytes, sens: bytes, qn: bytes,
                 key: Any = None, kind: int = KIND_OBJECT, public_only: bool = False) -> None:
        self.public = public
        self.name = compute_name(public)
        self.qn = qn
        self.hierarchy = hierarchy
        self.auth = auth
        self.seed = seed
        self.sens = sens
        self._key = key
        self.kind = kind
        self.seq_alg = ALG.NULL
        #: data hashed so far, kept only while small enough for a context blob (None: too big to save)
        self.seq_data: bytearray | None = bytearray()
        #: the first 4 bytes of the sequence (TPM_GENERATED_VALUE check)
        self.seq_prefix = b""
        self._seq_states: dict[int, Any] | None = None
        self.public_only = public_only
        self.evict_handle = 0

    def _states(self) -> dict[int, Any]:
        if self._seq_states is None:
            if self.kind == KIND_HMAC_SEQ:
                states: dict[int, Any] = {self.seq_alg: _hmac.new(self.sens, digestmod=HASHES[self.seq_alg][0])}
            elif self.kind == KIND_HASH_SEQ:
                states = {self.seq_alg: hashlib.new(HASHES[self.seq_alg][0])}
            else:  # event sequence: every hash a PCR bank may use
                states = {alg: hashlib.new(HASHES[alg][0]) for alg in (ALG.SHA1, ALG.SHA256, ALG.SHA384)}
            if self.seq_data:
                for st in states.values():
                    st.update(self.seq_data)
            self._seq_states = states
        return self._seq_states

    def seq_update(self, data: bytes) -> None:
        """Feed ``data`` to a hash/HMAC/event sequence (hashed as it arrives; memory stays bounded)."""
        if len(self.seq_prefix) < 4:
            self.seq_prefix += data[:4 - len(self.seq_prefix)]
        for st in self._states().values():
            st.update(data)
        if self.seq_data is not None:
            if len(self.seq_data) + len(data) <= SEQ_SAVE_LIMIT:
                self.seq_data += data
            else:
                self.seq_data = None

    def seq_digest(self, alg: int) -> bytes:
        """The digest (or HMAC) of everything fed so far, for ``alg``."""
        return self._states()[alg].digest()

    @property
    def attrs(self) -> int:
        """TPMA_OBJECT."""
        return self.public.attrs

    def is_storage_parent(self) -> bool:
        """A restricted decryption key (may be a parent)."""
        a = self.public.attrs
        return bool(a & TPMA_OBJECT.restricted and a & TPMA_OBJECT.decrypt and not a & TPMA_OBJECT.sign
                    and self.public.type in (ALG.RSA, ALG.ECC, ALG.SYMCIPHER) and not self.public_only)

    @property
    def key(self) -> Any:
        """The cryptography key object (private if present, else public), built lazily."""
        if self._key is None:
            self._key = key_from_public(self.public, None if self.public_only else self.sens)
        return self._key

    def public_key(self) -> Any:
        """The public key object."""
        k = self.key
        return k.public_key() if hasattr(k, "public_key") else k


def key_from_public(pub: Public, sens: bytes | None) -> Any:
    """A cryptography key from a public area and (optionally) the sensitive value.

    :raises TpmError: KEY / ECC_POINT if the values do not form a key.
    """
    if pub.type == ALG.RSA:
        n = int.from_bytes(pub.unique, "big")  # type: ignore[arg-type]
        if sens:
            return rsa_from_prime(n, int.from_bytes(sens, "big"), pub.exp)
        try:
            return rsa.RSAPublicNumbers(pub.exp, n).public_key()
        except ValueError:
            raise TpmError(RC.KEY) from None
    if pub.type == ALG.ECC:
        cls = CURVES[pub.curve][0]
        if sens:
            try:
                return ec.derive_private_key(int.from_bytes(sens, "big"), cls())
            except ValueError:
                raise TpmError(RC.KEY) from None
        x, y = pub.unique  # type: ignore[misc]
        try:
            return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                 cls()).public_key()
        except ValueError:
            raise TpmError(RC.ECC_POINT) from None
    return None


def marshal_sensitive(obj_type: int, auth: bytes, seed: bytes, sens: bytes) -> bytes:
    """TPMT_SENSITIVE."""
    return u16(obj_type) + tpm2b(auth) + tpm2b(seed) + tpm2b(sens)


def read_sensitive(r: Reader) -> tuple[int, bytes, bytes, bytes]:
    """TPMT_SENSITIVE -> (type, authValue, seedValue, sensitive)."""
    t = r.u16()
    if t not in (ALG.RSA, ALG.ECC, ALG.KEYEDHASH, ALG.SYMCIPHER):
        raise TpmError(RC.TYPE)
    return t, r.tpm2b(64), r.tpm2b(64), r.tpm2b(384)


def _protect_keys(parent: TpmObject, name: bytes) -> tuple[bytes, bytes]:
    pp = parent.public
    alg = pp.name_alg
    sym = kdfa(alg, parent.seed, b"STORAGE", name, b"", pp.sym[1])
    mac = kdfa(alg, parent.seed, b"INTEGRITY", b"", b"", HASHES[alg][1] * 8)
    return sym, mac


def wrap_sensitive(parent: TpmObject, name: bytes, sensitive: bytes, iv: bytes) -> bytes:
    """TPM2B_PRIVATE buffer for ``sensitive`` (a TPMT_SENSITIVE) under ``parent``."""
    sym, mac = _protect_keys(parent, name)
    enc = aes_cfb(sym, iv, tpm2b(sensitive), False)
    iv2b = tpm2b(iv)
    return tpm2b(hmac_digest(parent.public.name_alg, mac, iv2b, enc, name)) + iv2b + enc


def unwrap_sensitive(parent: TpmObject, name: bytes, private: bytes) -> bytes:
    """Check and decrypt a TPM2B_PRIVATE buffer.

    :raises TpmError: INTEGRITY if the HMAC fails (wrong parent, tampered, or Name mismatch).
    """
    import hmac as _hmac
    r = Reader(private)
    try:
        tag = r.tpm2b(64)
        iv_start = r.pos
        iv = r.tpm2b(16)
        if len(iv) != 16:
            raise TpmError(RC.INTEGRITY)
    except TpmError:
        raise TpmError(RC.INTEGRITY) from None
    enc = private[r.pos:]
    sym, mac = _protect_keys(parent, name)
    expect = hmac_digest(parent.public.name_alg, mac, private[iv_start:r.pos], enc, name)
    if not _hmac.compare_digest(expect, tag):
        raise TpmError(RC.INTEGRITY)
    plain = aes_cfb(sym, iv, enc, True)
    pr = Reader(plain)
    inner = pr.tpm2b()
    if pr.remaining():
        raise TpmError(RC.INTEGRITY)
    return inner


_PRIMARY_CACHE: dict[bytes, tuple[Any, bytes, bytes]] = {}
_PRIMARY_CACHE_MAX = 64


def _fill_public_from_key(pub: Public, key: Any, seed: bytes, sens: bytes) -> tuple[Public, bytes]:
    """Set unique from the key; return (public, sensitive bytes)."""
    if pub.type == ALG.RSA:
        nums = key.private_numbers()
        nbytes = pub.key_bits // 8
        return (pub.copy(unique=nums.public_numbers.n.to_bytes(nbytes, "big")),
                nums.p.to_bytes(nbytes // 2, "big"))
    if pub.type == ALG.ECC:
        size = CURVES[pub.curve][1]
        nums = key.private_numbers()
        return (pub.copy(unique=(nums.public_numbers.x.to_bytes(size, "big"),
                                 nums.public_numbers.y.to_bytes(size, "big"))),
                nums.private_value.to_bytes(size, "big"))
    return pub.copy(unique=H(pub.name_alg, seed, sens)), sens


def _sym_or_hmac_size(pub: Public) -> int:
    if pub.type == ALG.SYMCIPHER:
        return pub.sym[1] // 8
    return HASHES[pub.scheme[1] if pub.scheme[0] != ALG.NULL else pub.name_alg][1]


def derive_primary(hier_seed: bytes, pub: Public, data: bytes) -> tuple[Public, Any, bytes, bytes]:
    """Deterministic primary key material from the hierarchy seed and the template.

    Results are cached by (seed, template, data) so a repeated CreatePrimary costs a hash.

    :returns: (public with unique filled, key object or None, seedValue, sensitive bytes).
    """
    alg = pub.name_alg
    ctx = H(alg, pub.marshal()) + H(alg, data)
    ck = H(ALG.SHA256, hier_seed, ctx)
    hit = _PRIMARY_CACHE.get(ck)
    if hit is None:
        drbg = DRBG(alg, hier_seed, b"Primary Object Creation", ctx)
        if pub.type == ALG.RSA:
            key = derive_rsa(drbg, pub.key_bits, pub.exp)
        elif pub.type == ALG.ECC:
            key = derive_ecc(drbg, pub.curve)
        else:
            key = None
        seed = drbg.read(HASHES[alg][1])
        sens = data if data else (drbg.read(_sym_or_hmac_size(pub)) if key is None else b"")
        if len(_PRIMARY_CACHE) >= _PRIMARY_CACHE_MAX:
            _PRIMARY_CACHE.pop(next(iter(_PRIMARY_CACHE)))
        hit = _PRIMARY_CACHE[ck] = (key, seed, sens)
    key, seed, sens = hit
    out, sens_bytes = _fill_public_from_key(pub, key, seed, sens)
    return out, key, seed, sens_bytes


def generate_object(pub: Public, data: bytes, rng: Any) -> tuple[Public, Any, bytes, bytes]:
    """Fresh (random) key material for Create/CreateLoaded.

    Asymmetric keys come from cryptography's generator (the OS CSPRNG); seeds and
    symmetric material from the injected ``rng``.
    """
    if pub.type == ALG.RSA:
        key = rsa.generate_private_key(pub.exp, pub.key_bits)
    elif pub.type == ALG.ECC:
        key = ec.generate_private_key(CURVES[pub.curve][0]())
    else:
        key = None
    seed = rng(HASHES[pub.name_alg][1])
    sens = data if data else (rng(_sym_or_hmac_size(pub)) if key is None else b"")
    out, sens_bytes = _fill_public_from_key(pub, key, seed, sens)
    return out, key, seed, sens_bytes


def validate_public(pub: Public, data: bytes, auth: bytes, parent: TpmObject | None, pnum_pub: int = 2,
                    pnum_sens: int = 1) -> None:
    """Attribute/scheme consistency checks of Create/CreatePrimary (ref PublicAttributesValidation).

    :raises TpmError: ATTRIBUTES / SCHEME / SYMMETRIC / SIZE / HASH with the parameter number.
    """
    from ._constants import rc_param
    a = pub.attrs
    A = TPMA_OBJECT

    def fail(rc: int, n: int = pnum_pub) -> TpmError:
        return TpmError(rc_param(rc, n))

    if pub.name_alg == ALG.NULL:
        raise fail(RC.HASH)
    dsize = HASHES[pub.name_alg][1]
    if pub.policy and len(pub.policy) != dsize:
        raise fail(RC.SIZE)
    if len(auth.rstrip(b"\x00")) > dsize:
        raise fail(RC.SIZE, pnum_sens)
    if a & A.fixedTPM and not a & A.fixedParent:
        raise fail(RC.ATTRIBUTES)
    if parent is not None and a & A.fixedTPM and not parent.attrs & A.fixedTPM:
        raise fail(RC.ATTRIBUTES)
    if a & A.sensitiveDataOrigin and data and pub.type in (ALG.KEYEDHASH, ALG.SYMCIPHER):
        raise fail(RC.ATTRIBUTES)
    if data and pub.type in (ALG.RSA, ALG.ECC):
        raise fail(RC.SIZE, pnum_sens)
    sign, dec, restricted = a & A.sign, a & A.decrypt, a & A.restricted
    if restricted and sign and dec:
        raise fail(RC.ATTRIBUTES)
    if restricted and not (sign or dec):
        raise fail(RC.ATTRIBUTES)
    scheme = pub.scheme[0]
    if pub.type in (ALG.RSA, ALG.ECC):
        if restricted and dec:
            if pub.sym[0] == ALG.NULL:
                raise fail(RC.SYMMETRIC)
            if pub.sym[2] != ALG.CFB:
                raise fail(RC.MODE)
            if scheme != ALG.NULL:
                raise fail(RC.SCHEME)
        elif pub.sym[0] != ALG.NULL:
            raise fail(RC.SYMMETRIC)
        sig_schemes = (ALG.RSASSA, ALG.RSAPSS, ALG.ECDSA, ALG.ECSCHNORR, ALG.ECDAA)
        if sign and dec and scheme != ALG.NULL:
            raise fail(RC.SCHEME)
        if sign and not dec and scheme not in sig_schemes + (ALG.NULL,):
            raise fail(RC.SCHEME)
        if dec and not sign and scheme in sig_schemes:
            raise fail(RC.SCHEME)
        if restricted and sign and scheme == ALG.NULL:
            raise fail(RC.SCHEME)
        if not (sign or dec) and scheme != ALG.NULL:
            raise fail(RC.SCHEME)
    elif pub.type == ALG.KEYEDHASH:
        if sign and dec and scheme != ALG.NULL:
            raise fail(RC.SCHEME)
        if restricted and dec:
            raise fail(RC.ATTRIBUTES)
        if sign and not dec and scheme not in (ALG.HMAC, ALG.NULL):
            raise fail(RC.SCHEME)
        if dec and not sign and scheme not in (ALG.XOR, ALG.NULL):
            raise fail(RC.SCHEME)
        if not (sign or dec) and scheme != ALG.NULL:
            raise fail(RC.SCHEME)
        if not (sign or dec) and a & A.sensitiveDataOrigin:
            raise fail(RC.ATTRIBUTES)
    else:  # SYMCIPHER: "sign" means encrypt here; a restricted decrypt key may be a parent
        if restricted and sign:
            raise fail(RC.ATTRIBUTES)
        if restricted and pub.sym[2] != ALG.CFB:
            raise fail(RC.MODE)
        if pub.sym[0] == ALG.NULL:
            raise fail(RC.SYMMETRIC)
        if data and len(data) != pub.sym[1] // 8:
            raise fail(RC.SIZE, pnum_sens)


def marshal_object(o: TpmObject) -> bytes:
    """Serialize an object (context blobs, persistent state)."""
    from ._marshal import u8
    return b"".join((u32(o.hierarchy), u8(o.kind), u8(o.public_only), u16(o.seq_alg), tpm2b(o.public.marshal()),
                     tpm2b(o.auth), tpm2b(o.seed), tpm2b(o.sens), tpm2b(o.qn), u32(len(o.seq_data or b"")),
                     bytes(o.seq_data or b"")))


def unmarshal_object(r: Reader) -> TpmObject:
    """Inverse of :func:`marshal_object`."""
    hier, kind, public_only, seq_alg = r.u32(), r.u8(), r.u8(), r.u16()
    pr = r.sized()
    pub = read_public(pr, allow_null_name=True)
    pr.done()
    auth, seed, sens, qn = r.tpm2b(), r.tpm2b(), r.tpm2b(), r.tpm2b()
    data = r.raw(r.u32())
    o = TpmObject(pub, hier, auth, seed, sens, qn, kind=kind, public_only=bool(public_only))
    o.seq_alg = seq_alg
    o.seq_data = bytearray(data)
    o.seq_prefix = data[:4]
    return o


NULL_QN = u32(RH.NULL)
