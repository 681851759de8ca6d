"""Real SIGKILLs at random moments against a child process committing to a file-backed image.

The child acknowledges each commit on stdout only after ``commit()`` returned.  After every kill
the parent reopens the image: the store must hold exactly the last acknowledged generation or the
one being committed, with the contents the deterministic workload gives for it.  (A killed process
loses no page cache; power loss is covered by the fault injector in test_fault_injection.py.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from svsm.kernel.hw.blockdev import BlockDevice, FileImage
from svsm.modules.persist import Quota, Store

KEY = bytes(range(32))

CHILD = r"""
import itertools, os, sys
sys.path.insert(0, os.environ["CRASH_DIR"])
from conftest import batch_for
from svsm.kernel.hw.blockdev import BlockDevice, FileImage
from svsm.modules.persist import Quota, Store
image = FileImage(sys.argv[1], 512)
store = Store.open(BlockDevice(image), bytes(range(32)), clock=itertools.count().__next__,
                   rng=os.urandom, default_quota=Quota(1 << 20, 1 << 30))
print("open", store.generation, flush=True)
while True:
    gen = store.commit(batch_for(store.generation + 1))
    print("ack", gen, flush=True)
"""


@pytest.mark.slow
def test_sigkill_loop(tmp_path, workload) -> None:
    path = tmp_path / "state.img"
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    env = dict(os.environ, CRASH_DIR=os.path.dirname(__file__))
    last_acked = 0
    kills = 0
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env,
                                 text=True)
        first = child.stdout.readline().split()
        assert first[0] == "open" and int(first[1]) >= last_acked
        time.sleep(rnd.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        kills += child.returncode == -signal.SIGKILL
        acks = [int(line.split()[1]) for line in out.splitlines() if line.startswith("ack")]
        if acks:
            last_acked = acks[-1]
        with FileImage(path) as image:
            store = Store.open(BlockDevice(image), KEY, clock=lambda: 0, rng=os.urandom,
                               default_quota=Quota(1 << 20, 1 << 30))
            assert last_acked <= store.generation <= last_acked + 1, (store.generation, last_acked)
            assert workload.read(store) == workload.model(store.generation)
            last_acked = store.generation
    assert kills >= 1 and last_acked > 2
