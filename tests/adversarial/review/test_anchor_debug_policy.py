"""SECREVIEW: the persist anchor must not serve an SVSM whose guest policy allows debugging.

MEASUREMENT does not cover the guest policy, so the host can launch the very same SVSM image with
DEBUG set and drive it (it reads and writes that guest's memory).  Before the fix the anchor gave
such a CVM the real store's lease and accepted its generations: the host could fence the real CVM
(clone) or push the anchored generation past it (rollback) at will.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from svsm.modules.persist import AnchorClient, AnchorError, AnchorService, chain_verifier

pytestmark = pytest.mark.slow

POLICY = 0x30000
POLICY_DEBUG = 1 << 19
IMAGE = b"the same SVSM image".ljust(4096, b"\0")


@pytest.fixture(scope="module")
def fw(tmp_path_factory):  # type: ignore[no-untyped-def]
    from svsm.kernel.hw.psp import Chip, SnpFirmware

    return SnpFirmware(Chip.load_or_create(tmp_path_factory.mktemp("chip")))


def _launch(fw, policy: int):  # type: ignore[no-untyped-def]
    ctx = fw.launch_start(policy)
    fw.launch_update_normal(ctx, 0x1000, IMAGE)
    return ctx, fw.launch_finish(ctx)


def _client(service: AnchorService, fw, ctx) -> AnchorClient:  # type: ignore[no-untyped-def]
    vcek = fw.chip.vcek()[1].public_bytes(Encoding.DER)
    return AnchorClient(service.handle, lambda rd: (fw.build_report(ctx, rd, 0), vcek), rng=os.urandom)


def test_anchor_refuses_the_same_image_launched_with_debug(fw) -> None:  # type: ignore[no-untyped-def]
    real, measurement = _launch(fw, POLICY)
    debug, debug_measurement = _launch(fw, POLICY | POLICY_DEBUG)
    assert debug_measurement == measurement  # the policy is not measured: same identity at the anchor
    ark, ask, _ = fw.chip.chain_pem()
    service = AnchorService(Ed25519PrivateKey.generate(), chain_verifier(ark, ask), clock=lambda: 0,
                            rng=os.urandom, allowed_measurements={measurement})
    store = b"s" * 16
    with pytest.raises(AnchorError):  # refused: the host drives that SVSM
        _client(service, fw, debug).acquire(store)
    assert _client(service, fw, real).acquire(store) is None  # the real CVM is served
    permissive = AnchorService(Ed25519PrivateKey.generate(), chain_verifier(ark, ask), clock=lambda: 0,
                               rng=os.urandom, allow_debug=True)
    assert _client(permissive, fw, debug).acquire(store) is None
