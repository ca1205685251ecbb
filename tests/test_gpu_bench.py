"""The prepared GPU benchmark command: its floor arithmetic, and its CPU mode end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from limits import Hardware, ModelShape, rollout_floor, train_floor  # noqa: E402

# A toy shape small enough to add up by hand: 1 layer, hidden 2, one head of 2, MLP 1, vocabulary 3, 1 byte.
TOY = ModelShape(layers=1, hidden=2, heads=1, kv_heads=1, head_dim=2, intermediate=1, vocab=3, dtype_bytes=1)
# 1 byte/s and 1 FLOP/s: floors in seconds equal the byte and FLOP counts.
UNIT = Hardware(bandwidth_gb_s=1e-9, matmul_tflops=1e-12, matmul_size=1, copy_bytes=1)


def test_weights_and_kv_bytes_of_the_qwen05b_shape():
    shape = ModelShape(
        layers=24,
        hidden=896,
        heads=14,
        kv_heads=2,
        head_dim=64,
        intermediate=4864,
        vocab=151_936,
        dtype_bytes=2,
    )
    # Per layer: q 896*896 + k, v 2*896*128 + o 896*896 + MLP 3*896*4864 = 14,909,440.
    assert shape.layer_weights == 24 * 14_909_440 == 357_826_560
    assert shape.head_weights == 136_134_656
    # About 1 GB of weights per decoding step, and 0.94 GB of keys/values for 128 rows at 600 positions:
    # keys and values x 24 layers x 128 rows x 2 heads x 600 positions x 64 dims x 2 bytes.
    assert (shape.layer_weights + shape.head_weights) * 2 == 987_922_432
    assert shape.kv_bytes(128, 600) == 943_718_400


def test_rollout_and_training_floors_by_hand():
    # Toy weights: layer 2*2 + 2*(2*2) + 2*2 + 3*2*1 = 22, head 3*2 = 6. One prompt of 2 tokens, 3 new ones.
    assert (TOY.layer_weights, TOY.head_weights) == (22, 6)
    floor = rollout_floor(TOY, UNIT, prompts=1, generations=1, prompt_length=2, new_tokens=3)
    # Prefill: 2 * (22 * 2 tokens + 6 for the last one) + attention 4 * 2 * 2 queries * 1 key on average = 116.
    assert floor["prefill_s"] == pytest.approx(116)
    # Decoding steps at 3 and 4 columns: bytes 28 + 4c = 40, 44; FLOPs 2 * 28 + 8c = 80, 88.
    assert floor["decode_bytes_s"] == pytest.approx(84)
    assert floor["decode_flops_s"] == pytest.approx(168)
    assert floor["floor_s"] == pytest.approx(116 + 80 + 88)
    # Training: 6 * (22 * 5 rows + 6 * 3 head rows) + 3 * (16 + 8 * 3 queries * 3.5 keys) = 768 + 300.
    assert train_floor(TOY, UNIT, prompts=1, generations=1, prompt_length=2, new_tokens=3) == pytest.approx(
        1068
    )


def steps_graphs(results):
    return {k: v.get("cuda_graphs") for k, v in results["steps"].items() if k != "trl"}


@pytest.mark.slow
def test_the_cpu_mode_writes_every_stage(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "benchmarks/gpu/run.py",
        "--device",
        "cpu",
        "--tiny",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    assert results["environment"]["device"] == "cpu"
    tests = results["tests"]
    assert tests["tests"] >= 4 and tests["skipped"] == tests["tests"], "without CUDA every gpu test skips"
    assert tests["failures"] == tests["errors"] == 0 and tests["exit_code"] == 0
    assert (out / "gpu_tests.txt").read_text()

    hw, floor = results["hardware"], results["floor"]
    assert hw["bandwidth_gb_s"] > 0.1 and hw["matmul_tflops"] > 1e-4
    assert 0 < floor["prefill_s"] < floor["floor_s"] < floor["step_s"]
    assert floor["tokens_per_s"] == pytest.approx(2 * 4 * 16 / floor["floor_s"])

    assert results["failed"] == []
    assert set(results["rollout"]) == {"fast", "generate"}  # no graphs off CUDA
    assert (
        results["rollout"]["fast"]["cuda_graphs"] is False
        and results["rollout"]["generate"]["cuda_graphs"] is None
    )
    assert steps_graphs(results) == {"grpo_lightning": False, "grpo_lightning + generate": None}
    for r in results["rollout"].values():
        assert r["tokens"] == 2 * 4 * 16
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
        assert r["x_floor"] == pytest.approx(r["seconds"] / floor["floor_s"])
        assert r["peak_memory_gb"] is None  # no per-run figure on CPU

    steps = results["steps"]
    assert {"grpo_lightning", "grpo_lightning + generate"} <= set(steps)
    if "trl" not in steps:
        assert any(s.startswith("steps trl: trl (or datasets) is not importable") for s in results["skipped"])
    for r in steps.values():
        assert 0 < r["sampling_s"] < r["step_s"] and len(r["all_step_s"]) == 1
        assert r["x_floor"] == pytest.approx(r["step_s"] / floor["step_s"])

    summary = (out / "summary.md").read_text()
    assert (
        "| rollout | tokens/s |" in summary
        and "Failed:" not in summary
        and "| GRPO step | s/step |" in summary
    )
    assert "| fast |" in summary and "| grpo_lightning |" in summary
