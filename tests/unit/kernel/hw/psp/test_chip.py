"""Simulated chip identity: persistence, AMD-shaped certificate profile, TCB-versioned VCEKs."""

from __future__ import annotations

import datetime
import os
import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cryptography.hazmat.primitives.serialization import Encoding

from svsm.kernel.hw.psp import Chip, FirmwareImage, SnpFirmware, build_image, launch, launch_plan
from svsm.sdk import FatalError
from svsm.sdk.attestation import (
    PSS_PADDING,
    CertChain,
    TcbVersion,
    VcekOid,
    VerificationError,
    encode_tcb,
    load_chain,
    vcek_extensions,
    verify_chain,
    verify_report,
)


def _report(chip: Chip, version: int = 3) -> bytes:
    fw = SnpFirmware(chip, report_version=version)
    img = FirmwareImage.parse(build_image(0x4000, sections=[(0x800000, 0x1000, 2)]))
    res = launch(fw, launch_plan(img, vcpus=1, vcpu_sig=1))
    return fw.build_report(res.ctx, bytes(64), 0)


@pytest.fixture(scope="session")
def chip(tmp_path_factory: pytest.TempPathFactory) -> Chip:
    return Chip.load_or_create(tmp_path_factory.getbasetemp() / "psp-chip")


def test_reload_is_the_same_chip(chip: Chip) -> None:
    again = Chip.load_or_create(chip.state_dir)
    assert again.chip_id == chip.chip_id and again.tcb == chip.tcb
    assert again.chain_pem() == chip.chain_pem()
    assert oct(os.stat(chip.state_dir / "ark.key").st_mode & 0o777) == "0o600"
    assert oct(os.stat(chip.state_dir / "chip_secret.bin").st_mode & 0o777) == "0o600"


def test_state_dir_from_environment(monkeypatch: pytest.MonkeyPatch, chip: Chip) -> None:
    from svsm.kernel.hw.psp import default_state_dir

    monkeypatch.setenv("SVSM_PSP_STATE_DIR", str(chip.state_dir.parent))
    assert default_state_dir(chip.state_dir.name) == chip.state_dir
    assert Chip.load_or_create(name=chip.state_dir.name).chip_id == chip.chip_id


def test_certificate_profile(chip: Chip) -> None:
    chain = load_chain(*chip.chain_pem())
    verify_chain(chain)
    for cert, cn in ((chain.ark, "ARK-Milan"), (chain.ask, "SEV-Milan")):
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 4096
        assert cert.subject.rfc4514_string().startswith(f"CN={cn},")
        assert cert.signature_algorithm_parameters.__class__ is PSS_PADDING.__class__
    vkey = chain.vcek.public_key()
    assert isinstance(vkey, ec.EllipticCurvePublicKey) and vkey.curve.name == "secp384r1"
    ext = vcek_extensions(chain.vcek)
    assert ext.tcb == chip.tcb and ext.hwid == chip.chip_id and ext.product_name == "Milan-B0"
    oids = {e.oid.dotted_string for e in chain.vcek.extensions}
    assert {o.value for o in (VcekOid.BL_SPL, VcekOid.TEE_SPL, VcekOid.SNP_SPL, VcekOid.UCODE_SPL, VcekOid.HWID,
                              VcekOid.STRUCT_VERSION, VcekOid.PRODUCT_NAME)} <= oids  # fmt: skip


def test_vcek_is_per_tcb(chip: Chip) -> None:
    older = encode_tcb(TcbVersion(boot_loader=0, tee=0, snp=2, microcode=20))
    key_a, cert_a = chip.vcek()
    key_b, cert_b = chip.vcek(older)
    assert cert_a.public_key() != cert_b.public_key()
    assert vcek_extensions(cert_b).tcb == TcbVersion(0, 0, 2, 20)
    assert chip.vcek(older)[1] == cert_b  # stable
    # a report signed at the current TCB does not verify against the older-TCB VCEK
    report = _report(chip)
    ark, ask, _ = chip.chain_pem()
    with pytest.raises(VerificationError):
        verify_report(report, load_chain(ark, ask, cert_b.public_bytes(Encoding.PEM)))
    verify_report(report, load_chain(*chip.chain_pem()))


def test_tampered_chain_fails(chip: Chip) -> None:
    chain = load_chain(*chip.chain_pem())
    with pytest.raises(VerificationError):
        verify_chain(CertChain(chain.ask, chain.ask, chain.vcek))  # ASK is not self-signed
    with pytest.raises(VerificationError):
        verify_chain(CertChain(chain.ark, chain.ark, chain.vcek))  # VCEK not issued by the ARK
    with pytest.raises(VerificationError):
        verify_chain(chain, now=datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))


def test_broken_state_is_fatal(tmp_path: pathlib.Path) -> None:
    (tmp_path / "chip.json").write_text("{not json")
    with pytest.raises(FatalError):
        Chip.load_or_create(tmp_path)


@pytest.mark.slow
def test_turin_chip(tmp_path_factory: pytest.TempPathFactory) -> None:
    turin = Chip.load_or_create(tmp_path_factory.getbasetemp() / "psp-chip-turin", product="Turin",
                                tcb=TcbVersion(boot_loader=1, tee=2, snp=3, microcode=4, fmc=5))  # fmt: skip
    assert turin.chip_id[8:] == bytes(56)
    ext = vcek_extensions(load_chain(*turin.chain_pem()).vcek)
    assert ext.tcb == TcbVersion(1, 2, 3, 4, 5) and ext.hwid == turin.chip_id[:8] and ext.struct_version == 1
    r = verify_report(_report(turin), load_chain(*turin.chain_pem()))
    assert r.cpuid_fam_id == 0x1A and r.tcb() == TcbVersion(1, 2, 3, 4, 5)


@pytest.mark.slow
def test_concurrent_creation_yields_one_chip(tmp_path: pathlib.Path) -> None:
    """Two processes manufacturing the same (default-shared) chip end up with one identity."""
    import subprocess
    import sys

    code = ("import sys; from svsm.kernel.hw.psp import Chip; c = Chip.load_or_create(sys.argv[1]); "
            "print(c.chip_id.hex(), c.chain_pem()[2].decode().replace(chr(10), ''))")  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0][0] == outs[1][0]
    chain = load_chain(*Chip.load_or_create(tmp_path).chain_pem())
    verify_chain(chain)


def test_trusted_arks_pin_the_root(chip: Chip, tmp_path_factory: pytest.TempPathFactory) -> None:
    chain = load_chain(*chip.chain_pem())
    verify_chain(chain, trusted_arks=[chain.ark])
    report = _report(chip)
    verify_report(report, chain, trusted_arks=[chain.ark])
    other = Chip.load_or_create(tmp_path_factory.getbasetemp() / "psp-chip-turin", product="Turin",
                                tcb=TcbVersion(boot_loader=1, tee=2, snp=3, microcode=4, fmc=5))  # fmt: skip
    other_ark = load_chain(*other.chain_pem()).ark
    with pytest.raises(VerificationError):
        verify_report(report, chain, trusted_arks=[other_ark])
