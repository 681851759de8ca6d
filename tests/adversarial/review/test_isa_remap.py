"""SECREVIEW: a page the SVSM validates for the guest is zeroed, in the ISA hole too.

The host re-assigns the frame of the SVSM's secrets page at a guest GPA in 0xA0000-0x100000 and the
guest asks the SVSM to PVALIDATE it; before the fix the SVSM skipped the zeroing there (upstream's
read-only-MMIO FIXME) and the guest read VMPCK0.
"""

from __future__ import annotations

from svsm.kernel import boot
from svsm.kernel.hw.adversary import AdversarialHypervisor
from svsm.sdk.guest._abi import PvalidateEntry


def test_remapped_svsm_frame_in_the_isa_hole_is_zeroed_before_the_guest_sees_it() -> None:
    hv = AdversarialHypervisor()
    with boot(vcpus=1, memory="32M", hypervisor=hv) as cvm:
        g, x = cvm.guest, 0xA0000
        spa = hv.gpa_to_spa(cvm.layout.secrets_gpa)
        assert hv.rmpupdate(spa, x, assigned=True).rc == 0  # the secrets frame now backs GPA x
        hv.remap(x >> 12, spa >> 12)
        g.pvalidate([PvalidateEntry(x)])
        seen = g.mem.read(x, 4096)
        assert bytes(cvm.svsm.secrets.vmpck(0)) not in seen
        assert seen == bytes(4096)
        # the SVSM's secrets page is gone (the host destroyed it): leave without the leak check
        cvm.shutdown(check_leaks=False)
