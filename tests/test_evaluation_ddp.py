"""Figures per source and maj@k reduce across devices: two processes (gloo on CPU) give what one gives,
also when a batch's sources differ between the processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import child_env

HERE = Path(__file__).parent


def run(tmp_path: Path, devices: int) -> dict[str, float]:
    out = tmp_path / f"metrics{devices}.json"
    done = subprocess.run(
        [sys.executable, str(HERE / "eval_ddp_worker.py"), str(out), str(devices)],
        cwd=tmp_path, env=child_env(str(HERE)), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_give_the_figures_of_one(tmp_path):
    two, one = run(tmp_path, 2), run(tmp_path, 1)
    assert set(two) == set(one) and {"val/add/maj@4", "val/sub/maj@4", "val/maj@2"} <= set(two)
    assert two == pytest.approx(one, abs=1e-6)
    # by hand: the 4-sample figures of 9-9= (answers 0 0 1 1, right 0) are 1/2 for every k of maj@k
    assert one["val/sub/maj@4"] == pytest.approx((1 / 4 + 1 / 2) / 2)
