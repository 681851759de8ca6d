"""Platform construction, statistics, and the memory cost of a 64 GiB guest."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from svsm.kernel.hw import PAGE_SIZE, Platform
from svsm.kernel.hw.testing import make_guest

_CHILD = r"""
import json
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
import svsm.kernel.hw as hw
base = rss()
p = hw.Platform(memory_size=64 << 30, vcpu_count=8, asid=7, c_bit=51, seed=1)
created = rss()
for spa in range(0, 64 << 30, hw.PAGE_SIZE_2M):   # every page private, as 2 MiB entries
    assert p.hypervisor.rmpupdate(spa, spa, assigned=True, page_size=1).rc == 0
assigned = rss()
print(json.dumps([base, created, assigned, p.rmp.statistics().assigned_2m]))
"""


@pytest.mark.slow
def test_64gib_guest_costs_well_under_100mib() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], check=True, capture_output=True, text=True, timeout=120)
    base, created, assigned, n2m = json.loads(out.stdout)
    assert n2m == 32768
    assert created - base < 10 * 1024  # KiB
    assert assigned - base < 50 * 1024


def test_constructor_checks() -> None:
    for kwargs in ({"asid": 0}, {"c_bit": 0}, {"vcpu_count": 0}, {"memory_size": 100}):
        with pytest.raises(ValueError):
            Platform(**{"memory_size": 1 << 20, **kwargs})  # type: ignore[arg-type]


def test_seed_and_rng_make_the_key() -> None:
    def ct(**kw):  # type: ignore[no-untyped-def]
        p = make_guest(**kw)
        p.guest_view(0).write(0x1000, b"same")
        return p.host.read(0x1000, 16)

    assert ct(seed=1) == ct(seed=1) != ct(seed=2)
    p = Platform(memory_size=1 << 20, rng=random.Random(5))
    q = Platform(memory_size=1 << 20, seed=5)
    assert p.memory._key == q.memory._key


def test_vcpus_strip_c_bit_and_statistics() -> None:
    p = make_guest(vcpu_count=3, c_bit=47)
    assert [v.apic_id for v in p.vcpus] == [0, 1, 2] and p.vcpu_by_apic_id(2) is p.vcpus[2]
    assert p.vcpu_by_apic_id(9) is None
    assert p.strip_c_bit((1 << 47) | 0x5000) == (0x5000, True) and p.strip_c_bit(0x5000) == (0x5000, False)
    st = p.statistics()
    assert st.vcpus == 3 and st.rmp.assigned_4k == 256 + 3 and st.memory.size == 16 << 20
    ap = p.add_vcpu(17)
    assert ap.index == 3 and p.vcpu_by_apic_id(17) is ap


def test_firmware_access_launch_flow() -> None:
    """What the PSP's LAUNCH_UPDATE does: host writes plaintext, firmware encrypts it in place."""
    p = Platform(memory_size=1 << 20)
    p.host.write(0x3000, b"firmware image")
    fw = p.firmware
    assert fw.encrypt_in_place(0x3000)[:14] == b"firmware image"
    fw.set_rmp(0x3000, assigned=True, gpa=0x3000, validated=True)
    assert fw.read_private(0x3000)[:14] == b"firmware image"
    assert fw.read_raw(0x3000)[:14] != b"firmware image"
    e = fw.rmp_entry(0x3000)
    assert e.assigned and e.validated and e.asid == p.asid and e.perms == (0x1F, 0, 0, 0)
    with pytest.raises(ValueError):
        fw.read_raw(0x3001)
    with pytest.raises(ValueError):
        fw.write_private(0x3000, bytes(PAGE_SIZE + 1))


_CHILD_4K = r"""
import json
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
import svsm.kernel.hw as hw
from svsm.kernel.hw.testing import make_guest
p = make_guest(memory_size=2 << 30, private=[])
bsp = p.vcpus[0]
bsp.vmrun(0)
view = bsp.view(0)
base = rss()
for spa in range(0, 1 << 30, hw.PAGE_SIZE_2M):
    assert p.hypervisor.rmpupdate(spa, spa, assigned=True, page_size=1).rc == 0
    assert p.hypervisor.psmash(spa).rc == 0
for gpa in range(0, 1 << 30, hw.PAGE_SIZE):   # what the SVSM does for the guest: 4K PVALIDATE + zero
    assert bsp.pvalidate(gpa).rc == 0
view.zero(0, 1 << 30)
print(json.dumps([base, rss(), p.rmp.statistics().validated]))
"""


@pytest.mark.slow
def test_one_gib_validated_at_4k_stays_small() -> None:
    """262144 validated, zeroed 4 KiB pages: RMP arrays + zero bitmap, a few MiB in total."""
    out = subprocess.run([sys.executable, "-c", _CHILD_4K], check=True, capture_output=True, text=True, timeout=120)
    base, after, validated = json.loads(out.stdout)
    assert validated >= 262144
    assert after - base < 20 * 1024  # KiB
