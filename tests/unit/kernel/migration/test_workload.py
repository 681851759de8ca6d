"""The guest workload keeps all its state in guest memory and notices a wrong page."""

from __future__ import annotations

import threading

import pytest

from svsm.kernel import boot
from svsm.kernel.migration import RunGate
from svsm.kernel.migration._workload import CONTROL, GuestWorkload
from svsm.sdk import FatalError


def test_steps_verify_and_attach_finds_the_workload_from_memory() -> None:
    with boot(vcpus=1, memory="16M") as cvm:
        g = cvm.guest
        g.accept_memory(0, cvm.layout.svsm_base)
        wl = GuestWorkload.create(g, None, pages=8, pages_per_step=3)
        assert wl.run(threading.Event(), RunGate(), max_steps=11) == 11
        again = GuestWorkload.attach(g)
        assert again.control_gpa == wl.control_gpa
        check = again.verify()
        assert check.step == 11 and check.pages_checked == 8 and check.pcr_matches
        region = CONTROL.unpack(g.mem.read(wl.control_gpa, CONTROL.size))[6]
        page = region + 2 * 4096
        g.mem.write(page + 100, b"\xff")  # memory the step counter does not explain
        with pytest.raises(FatalError):
            again.verify()


def test_attach_without_a_workload_fails() -> None:
    with boot(vcpus=1, memory="16M") as cvm:
        with pytest.raises(FatalError):
            GuestWorkload.attach(cvm.guest)
