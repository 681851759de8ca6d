"""SECREVIEW: the persist anchor accepts domain-separated module reports, and only the persist module's.

A kernel that wraps module reports signs REPORT_DATA = module_report_data(name, code, binding), so no
module can mint the SVSM's own bindings.  The anchor recomputes that value from the op's ``module``
field; before this change it only knew the bare binding and refused every wrapped report.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from svsm.modules.persist import AnchorClient, AnchorError, AnchorService, chain_verifier
from svsm.sdk import module_report_data

pytestmark = pytest.mark.slow

PERSIST_CODE, OTHER_CODE = b"\x11" * 48, b"\x22" * 48


@pytest.fixture(scope="module")
def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    from svsm.kernel.hw.psp import Chip, SnpFirmware

    fw = SnpFirmware(Chip.load_or_create(tmp_path_factory.mktemp("chip")))
    ctx = fw.launch_start()
    fw.launch_update_normal(ctx, 0x1000, b"svsm".ljust(4096, b"\0"))
    fw.launch_finish(ctx)
    return fw, ctx


def _service(fw, **kw) -> AnchorService:  # type: ignore[no-untyped-def]
    ark, ask, _ = fw.chip.chain_pem()
    return AnchorService(Ed25519PrivateKey.generate(), chain_verifier(ark, ask), clock=lambda: 0, rng=os.urandom, **kw)


def _client(service: AnchorService, world, name: str | None, code: bytes = PERSIST_CODE) -> AnchorClient:  # type: ignore[no-untyped-def]
    fw, ctx = world
    vcek = fw.chip.vcek()[1].public_bytes(Encoding.DER)

    def kernel_attest(binding: bytes) -> tuple[bytes, bytes]:  # what the kernel signs for module `name`
        rd = module_report_data(name, code, binding) if name is not None else binding
        return fw.build_report(ctx, rd, 0), vcek

    return AnchorClient(service.handle, kernel_attest, rng=os.urandom, module=(name, code) if name else None)


def test_wrapped_reports_of_persist_are_served(world) -> None:  # type: ignore[no-untyped-def]
    service = _service(world[0])
    assert _client(service, world, "persist").acquire(b"a" * 16) is None
    assert _client(service, world, None).acquire(b"b" * 16) is None  # a kernel that does not wrap yet


def test_other_modules_and_bare_bindings_are_refused_when_configured(world) -> None:  # type: ignore[no-untyped-def]
    service = _service(world[0], module_measurements={PERSIST_CODE}, accept_unwrapped=False)
    with pytest.raises(AnchorError):
        _client(service, world, "evil").acquire(b"c" * 16)  # another module's report
    with pytest.raises(AnchorError):
        _client(service, world, "persist", OTHER_CODE).acquire(b"c" * 16)  # other persist code
    with pytest.raises(AnchorError):
        _client(service, world, None).acquire(b"c" * 16)  # a bare binding: any VMPL0 report over chosen bytes
    assert _client(service, world, "persist").acquire(b"c" * 16) is None
