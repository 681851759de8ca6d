"""``svsm migrate-demo``: a destination process (``svsm run --incoming 0``) and the source here,
over loopback TCP; the demo's proof must hold claim by claim."""

from __future__ import annotations

import json

import pytest

from svsm.kernel.cli import main

pytestmark = pytest.mark.slow


def test_demo_migrates_between_two_processes_and_proves_it(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["migrate-demo", "--json", "--no-progress", "--memory", "24M", "--vcpus", "1", "--warmup", "0.3",
               "--after-steps", "10"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    proof = out["proof"]
    assert proof == {"source_rc": 0, "destination_rc": 0, "committed": True, "fingerprints_identical": True,
                     "guest_continued": True, "pcr_continuous": True, "source_refuses_resume": True}, proof  # fmt: skip
    assert rc == 0
    src, dst = out["source"]["migration"], out["destination"]["migration"]
    assert src["bytes_sent"] == dst["bytes_received"] > 0
    assert src["rounds"] == len(src["pages_per_round"]) >= 2 and 0 < src["downtime"] < src["total_time"]
    assert dst["peer_measurement"] == src["peer_measurement"]  # same SVSM build on both ends
    assert out["destination"]["workload"]["step_after"] == out["source"]["workload_step"] + 10
