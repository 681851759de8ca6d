"""SECREVIEW: the migration `vm` service does not take VMSA contents on the module's word.

Before bd30dc9 `MigratableVm.write_pages` (the module's `write` op) applied a page flagged VMSA whose
VMPL byte was 0; the host, which may VMRUN any RMP VMSA page of the guest, then ran guest-chosen
code at VMPL0 and read the SVSM's secrets page.  A running source accepted such writes too.
"""

from __future__ import annotations

import pytest

from svsm.kernel import boot
from svsm.kernel.hw import VMSA
from svsm.kernel.migration import MigratableVm, RunGate
from svsm.kernel.migration._state import PAGE_ASSIGNED, PAGE_VALIDATED, PAGE_VMSA
from svsm.sdk import RequestError

STATE = PAGE_ASSIGNED | PAGE_VALIDATED | PAGE_VMSA


def _vmsa(vmpl: int) -> bytes:
    v = VMSA()
    v.vmpl, v.efer, v.sev_features = vmpl, 0x1D00, 1
    return bytes(v)


def test_a_vmpl0_vmsa_record_is_refused_and_a_running_source_takes_no_pages() -> None:
    with boot(vcpus=2, memory="32M") as cvm:
        dst = MigratableVm(cvm, gate=RunGate(paused=True))
        with pytest.raises(RequestError):
            dst.write_pages([(0x180, STATE, _vmsa(0))])
        assert not cvm.platform.rmp.read(0x180).vmsa
        src = MigratableVm(cvm)  # its guest runs: a source
        with pytest.raises(RequestError):
            src.write_pages([(0x181, PAGE_ASSIGNED | PAGE_VALIDATED, bytes(4096))])
