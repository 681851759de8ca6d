"""A simulated AMD chip's identity: CHIP_ID, TCB, and the ARK -> ASK -> VCEK chain.

Shaped like AMD's (VCEK/KDS spec #57230 as read by go-sev-guest, virtee/sev, CCF):

* ARK (root, self-signed) and ASK (intermediate): RSA-4096, signatures RSASSA-PSS with
  SHA-384, MGF1-SHA-384, salt 48; subjects ``CN=ARK-<product>`` / ``CN=SEV-<product>``
  under AMD's location RDNs (the organisation says it is a simulation).
* VCEK: EC P-384, ``CN=SEV-VCEK``, signed by the ASK, carrying structVersion,
  productName, the TCB SPL extensions (blSPL, teeSPL, snpSPL, spl_4..7, ucodeSPL; fmcSPL on
  Turin) as DER INTEGERs and hwID (the 64-byte CHIP_ID) as an OCTET STRING.

Like the real VCEK, the private key is *derived* from a chip-unique secret and the TCB, so
the same chip at the same TCB always has the same VCEK.  Everything is persisted in a
state directory (``SVSM_PSP_STATE_DIR``, else ``$XDG_DATA_HOME/pysvsm/psp/<name>``) so a
chip is stable across runs; private keys are written 0600.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import threading
from collections.abc import Callable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from svsm.sdk import FatalError
from svsm.sdk.attestation import PSS_PADDING, TcbLayout, TcbVersion, VcekOid, decode_tcb, encode_tcb

__all__ = ["Chip", "ChipProduct", "PRODUCTS", "default_state_dir"]

log = logging.getLogger(__name__)

_P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


@dataclasses.dataclass(frozen=True, slots=True)
class ChipProduct:
    """A product line: names, CPUID family/model/stepping and TCB byte layout."""

    name: str
    product_name: str
    family: int
    model: int
    stepping: int
    layout: TcbLayout


#: Products the model can impersonate (CPUID values: snp.md 1 and 3.3).
PRODUCTS: dict[str, ChipProduct] = {
    "Milan": ChipProduct("Milan", "Milan-B0", 0x19, 0x01, 0x1, TcbLayout.MILAN_GENOA),
    "Genoa": ChipProduct("Genoa", "Genoa-B0", 0x19, 0x11, 0x0, TcbLayout.MILAN_GENOA),
    "Turin": ChipProduct("Turin", "Turin-B0", 0x1A, 0x00, 0x0, TcbLayout.TURIN),
}

#: Default TCB: the Milan SPLs of a real KDS VCEK URL (enarx test data: bl 0, tee 0,
#: snp 3, ucode 29).
DEFAULT_TCB = TcbVersion(boot_loader=0, tee=0, snp=3, microcode=29)


def default_state_dir(name: str = "default") -> pathlib.Path:
    """Where chip ``name`` lives unless told otherwise (``SVSM_PSP_STATE_DIR`` overrides)."""
    env = os.environ.get("SVSM_PSP_STATE_DIR")
    if env:
        return pathlib.Path(env) / name
    base = os.environ.get("XDG_DATA_HOME") or pathlib.Path.home() / ".local" / "share"
    return pathlib.Path(base) / "pysvsm" / "psp" / name


@contextlib.contextmanager
def _locked(state_dir: pathlib.Path) -> Iterator[None]:
    """An exclusive lock on the chip's state directory (between processes)."""
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: pathlib.Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _amd_name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices (pysvsm simulation)"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])  # fmt: skip


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82]) + n.to_bytes(2, "big")
    return bytes([tag]) + length + body


class Chip:
    """One simulated chip.  Use :meth:`load_or_create`.

    :ivar chip_id: the 64-byte CHIP_ID (Turin: only the first 8 bytes non-zero).
    :ivar tcb: the current (= committed = reported) TCB.
    """

    def __init__(self, state_dir: pathlib.Path, meta: dict, secret: bytes,
                 ark: tuple[rsa.RSAPrivateKey, x509.Certificate],
                 ask: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:  # fmt: skip
        self.state_dir = state_dir
        self.product = PRODUCTS[meta["product"]]
        self.chip_id = bytes.fromhex(meta["chip_id"])
        self.tcb = TcbVersion(**meta["tcb"])
        self.created = datetime.datetime.fromisoformat(meta["created"])
        self._secret = secret
        self._ark_key, self.ark_cert = ark
        self._ask_key, self.ask_cert = ask
        self._vceks: dict[int, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = {}

    # -- construction -------------------------------------------------------------------

    @classmethod
    def load_or_create(
        cls,
        state_dir: pathlib.Path | str | None = None,
        *,
        name: str = "default",
        product: str = "Milan",
        tcb: TcbVersion = DEFAULT_TCB,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
    ) -> Chip:
        """Load the chip in ``state_dir``, or manufacture one there.

        :param state_dir: default :func:`default_state_dir` ``(name)``.
        :param product: ``Milan``, ``Genoa`` or ``Turin`` (only used when creating).
        :param tcb: the TCB a new chip starts at.
        :param rng: randomness for CHIP_ID and the chip secret (RSA keys use the OS RNG).
        :param clock: certificate validity start.
        :raises FatalError: the state directory exists but is inconsistent.
        """
        path = pathlib.Path(state_dir) if state_dir is not None else default_state_dir(name)
        meta_path = path / "chip.json"
        if meta_path.exists():
            return cls._load(path)
        if product not in PRODUCTS:
            raise ValueError(f"unknown product {product!r}; one of {sorted(PRODUCTS)}")
        path.mkdir(parents=True, exist_ok=True)
        with _locked(path):  # several processes may share the default chip
            if not meta_path.exists():
                cls._manufacture(path, product, tcb, rng, clock())
        return cls._load(path)

    @classmethod
    def _manufacture(cls, path: pathlib.Path, product: str, tcb: TcbVersion, rng: Callable[[int], bytes],
                     now: datetime.datetime) -> None:  # fmt: skip
        meta_path = path / "chip.json"
        prod = PRODUCTS[product]
        chip_id = rng(64) if prod.layout is TcbLayout.MILAN_GENOA else rng(8) + bytes(56)
        log.info("manufacturing simulated %s chip in %s", product, path)
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        ark_cert = cls._ca_cert(ark_key, ark_key, f"ARK-{product}", f"ARK-{product}", now, serial=1)
        ask_cert = cls._ca_cert(ask_key, ark_key, f"SEV-{product}", f"ARK-{product}", now, serial=2)
        pem = serialization.Encoding.PEM
        for stem, key, cert in (("ark", ark_key, ark_cert), ("ask", ask_key, ask_cert)):
            key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            _write(path / f"{stem}.key", key_pem, private=True)
            _write(path / f"{stem}.pem", cert.public_bytes(pem))
        _write(path / "chip_secret.bin", rng(64), private=True)
        meta = {"product": product, "chip_id": chip_id.hex(), "tcb": tcb._asdict(), "created": now.isoformat()}
        _write(meta_path, json.dumps(meta, indent=2).encode())  # written last: marks the chip complete

    @classmethod
    def _load(cls, path: pathlib.Path) -> Chip:
        try:
            meta = json.loads((path / "chip.json").read_text())
            secret = (path / "chip_secret.bin").read_bytes()
            keys = []
            for stem in ("ark", "ask"):
                # Our own keys from a 0600 state dir: skip the (slow, ~0.5 s per RSA-4096 key) consistency check.
                key = serialization.load_pem_private_key(
                    (path / f"{stem}.key").read_bytes(), None, unsafe_skip_rsa_key_validation=True
                )
                cert = x509.load_pem_x509_certificate((path / f"{stem}.pem").read_bytes())
                assert isinstance(key, rsa.RSAPrivateKey)
                keys.append((key, cert))
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            raise FatalError(f"simulated chip state in {path} is unusable: {exc!r}") from exc
        return cls(path, meta, secret, keys[0], keys[1])

    @staticmethod
    def _ca_cert(key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey, cn: str, issuer: str,
                 now: datetime.datetime, serial: int) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(_amd_name(cn))
            .issuer_name(_amd_name(issuer))
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=25 * 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )  # fmt: skip
        return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS_PADDING)

    # -- keys ---------------------------------------------------------------------------

    def _kdf(self, label: bytes, length: int = 48) -> bytes:
        return HKDF(algorithm=hashes.SHA384(), length=length, salt=None, info=label).derive(self._secret)

    @property
    def raw_tcb(self) -> int:
        """The current TCB as the u64 the report carries."""
        return encode_tcb(self.tcb, self.product.layout)

    def key_derivation_root(self) -> bytes:
        """The chip-unique root for MSG_KEY_REQ with ROOT_KEY_SELECT = VCEK."""
        return self._kdf(b"pysvsm VCEK key-derivation root")

    def vcek(self, raw_tcb: int | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """The VCEK private key and certificate for ``raw_tcb`` (default: current TCB).

        The key is derived from the chip secret and the TCB; the certificate is persisted
        (``vcek-<tcb>.pem``) so the same PEM comes back on every run.
        """
        raw_tcb = self.raw_tcb if raw_tcb is None else raw_tcb
        cached = self._vceks.get(raw_tcb)
        if cached is not None:
            return cached
        scalar = int.from_bytes(self._kdf(b"pysvsm VCEK" + raw_tcb.to_bytes(8, "little"), 64), "big")
        key = ec.derive_private_key(scalar % (_P384_ORDER - 1) + 1, ec.SECP384R1())
        path = self.state_dir / f"vcek-{raw_tcb:016x}.pem"
        with _locked(self.state_dir):
            cert = x509.load_pem_x509_certificate(path.read_bytes()) if path.exists() else None
            if cert is None or cert.public_key() != key.public_key():
                cert = self._vcek_cert(key, raw_tcb)
                _write(path, cert.public_bytes(serialization.Encoding.PEM))
        self._vceks[raw_tcb] = (key, cert)
        return key, cert

    def _vcek_cert(self, key: ec.EllipticCurvePrivateKey, raw_tcb: int) -> x509.Certificate:
        tcb = decode_tcb(raw_tcb, self.product.layout)
        raw = raw_tcb.to_bytes(8, "little")
        exts: list[tuple[VcekOid, bytes]] = [
            (VcekOid.STRUCT_VERSION, _der_int(1 if self.product.layout is TcbLayout.TURIN else 0)),
            (VcekOid.PRODUCT_NAME, _der(0x16, self.product.product_name.encode())),
            (VcekOid.BL_SPL, _der_int(tcb.boot_loader)),
            (VcekOid.TEE_SPL, _der_int(tcb.tee)),
            (VcekOid.SNP_SPL, _der_int(tcb.snp)),
        ]
        if self.product.layout is TcbLayout.TURIN:
            exts += [(VcekOid.SPL_5, _der_int(raw[4])), (VcekOid.SPL_6, _der_int(raw[5])),
                     (VcekOid.SPL_7, _der_int(raw[6])), (VcekOid.FMC_SPL, _der_int(tcb.fmc))]  # fmt: skip
            hwid = self.chip_id[:8]
        else:
            exts += [(VcekOid.SPL_4, _der_int(raw[2])), (VcekOid.SPL_5, _der_int(raw[3])),
                     (VcekOid.SPL_6, _der_int(raw[4])), (VcekOid.SPL_7, _der_int(raw[5]))]  # fmt: skip
            hwid = self.chip_id
        exts += [(VcekOid.UCODE_SPL, _der_int(tcb.microcode)), (VcekOid.HWID, _der(0x04, hwid))]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_amd_name("SEV-VCEK"))
            .issuer_name(self.ask_cert.subject)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(hashlib.sha256(raw + self.chip_id).digest()[:16], "big") >> 1)
            .not_valid_before(self.created - datetime.timedelta(days=1))
            .not_valid_after(self.created + datetime.timedelta(days=7 * 365))
        )
        for oid, value in exts:
            builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid.value), value), critical=False)
        return builder.sign(self._ask_key, hashes.SHA384(), rsa_padding=PSS_PADDING)

    def chain_pem(self, raw_tcb: int | None = None) -> tuple[bytes, bytes, bytes]:
        """ARK, ASK and VCEK certificates as PEM."""
        pem = serialization.Encoding.PEM
        return self.ark_cert.public_bytes(pem), self.ask_cert.public_bytes(pem), self.vcek(raw_tcb)[1].public_bytes(pem)

    def chain_der(self, raw_tcb: int | None = None) -> tuple[bytes, bytes, bytes]:
        """ARK, ASK and VCEK certificates as DER (the extended-request certificate table's form)."""
        der = serialization.Encoding.DER
        return self.ark_cert.public_bytes(der), self.ask_cert.public_bytes(der), self.vcek(raw_tcb)[1].public_bytes(der)

