"""The graphed decoding path checks itself: the first recording of each shape is replayed once against
the same step run eagerly, and a capture that raises or disagrees makes the engine decode eagerly
(the lean loop) from then on, after one warning.

CUDA graphs need a GPU; here the device check is patched to allow them on CPU and the capture is
simulated (a stand-in that, like a CUDA graph, refreshes one output tensor in place on each replay),
correct, raising, or replaying wrong logits.
"""

from __future__ import annotations

import logging
import math
import re
import warnings

import pytest
import torch
from helpers import assert_same_fields

import grpo_lightning.rollout.engines.fast as fast_module
from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.rollout.engine import RolloutRequest, SamplingConfig
from grpo_lightning.rollout.engines import FastRolloutEngine
from grpo_lightning.rollout.engines.graphed import GraphCheck, StaticStepDecoder, compare_logits

PROMPTS = ["Compute 18 - 4 + 11 + 2, please.", "What is 5 + 9?", "3 + 3 ="]
FIELDS = ("completion_ids", "completion_mask", "truncated", "lengths", "sampling_logp")
SAMPLING = SamplingConfig(max_completion_length=20, temperature=1.0)
CHECK_LOG = "lightning.pytorch.utilities.rank_zero"


class FakeGraph:
    """Stands in for ``torch.cuda.CUDAGraph``: replay() writes ``step()`` into the captured output."""

    def __init__(self, step, out):
        self.step, self.out = step, out

    def replay(self):
        self.out.copy_(self.step())


def correct_capture(self, span):
    self.captures += 1
    out = self._static_step(span).clone()
    return FakeGraph(lambda: self._static_step(span), out), out


def wrong_capture(self, span):
    """A recording that runs but replays something else (as a stale address would): token 5 boosted."""
    self.captures += 1

    def replay():
        logits = self._static_step(span).clone()
        logits[:, 5] += 30.0
        return logits

    out = replay()
    return FakeGraph(replay, out), out


def failing_capture(self, span):
    raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def model(tokenizer):
    return build_tiny_model(tokenizer, arch="qwen2")


def simulate(monkeypatch, capture):
    """Graphs allowed on CPU, recorded by ``capture``."""
    monkeypatch.setattr(StaticStepDecoder, "_capture", capture)
    monkeypatch.setattr(fast_module, "graph_unsupported_reason", lambda device, model: None)


def run(engine, model, tokenizer, seed=0, prompts=PROMPTS):
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    request = RolloutRequest(
        enc.input_ids, enc.attention_mask, num_generations=3, sampling=SAMPLING, eos_token_ids=[1],
        pad_token_id=0, seed=seed,
    )  # fmt: skip
    return engine.generate(model, request)


def assert_same(a, b):
    assert_same_fields(a, b, FIELDS)


def graph_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "CUDA graph" in str(w.message)]


@pytest.mark.parametrize(
    ("capture", "cause"),
    [(failing_capture, "failed .operation not permitted"), (wrong_capture, "is wrong: .* DIFFER")],
    ids=["capture-raises", "wrong-logits"],
)
def test_a_bad_recording_falls_back_to_the_eager_loop_with_one_warning(
    monkeypatch, tokenizer, model, capture, cause
):
    simulate(monkeypatch, capture)
    engine = FastRolloutEngine()  # "auto"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = run(engine, model, tokenizer, seed=1)
        second = run(engine, model, tokenizer, seed=2)
        third = run(engine, model, tokenizer, seed=2, prompts=PROMPTS[:2])  # another shape: no new attempt
    found = graph_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    assert re.search(cause, str(found[0].message)), str(found[0].message)
    assert "decoding without graphs on cpu from now on" in str(found[0].message)
    # Every rollout, the one that checked included, is exactly what the eager engine samples.
    lean = FastRolloutEngine("lean")
    assert_same(first, run(lean, model, tokenizer, seed=1))
    assert_same(second, run(lean, model, tokenizer, seed=2))
    assert_same(third, run(lean, model, tokenizer, seed=2, prompts=PROMPTS[:2]))
    assert engine._static is None  # the recordings' buffers are freed


def test_a_good_recording_is_checked_once_logged_and_then_replayed(monkeypatch, tokenizer, model, caplog):
    simulate(monkeypatch, correct_capture)
    engine = FastRolloutEngine(span_block=8)
    with caplog.at_level(logging.INFO, logger=CHECK_LOG), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = run(engine, model, tokenizer, seed=1)
        second = run(engine, model, tokenizer, seed=2)  # same shape: no second check
    assert graph_warnings(record) == []
    checks = [r.getMessage() for r in caplog.records if "CUDA graph check" in r.getMessage()]
    assert len(checks) == 1, checks
    assert "agree (max |logit difference| 0, tolerance" in checks[0] and " ms)" in checks[0]
    assert engine._static is not None and engine._static.checked and engine._static.graphs
    # The replays are the eager static step, so the rollouts are the static engine's.
    static = FastRolloutEngine("static", span_block=8)
    assert_same(first, run(static, model, tokenizer, seed=1))
    assert_same(second, run(static, model, tokenizer, seed=2))


def test_a_new_shape_is_checked_again(monkeypatch, tokenizer, model, caplog):
    simulate(monkeypatch, correct_capture)
    engine = FastRolloutEngine()
    with caplog.at_level(logging.INFO, logger=CHECK_LOG):
        run(engine, model, tokenizer)
        run(engine, model, tokenizer, prompts=PROMPTS[:2])  # fewer rows: new buffers, new recordings
    assert sum("CUDA graph check" in r.getMessage() for r in caplog.records) == 2


def test_decoder_graph_refuses_a_wrong_recording(monkeypatch, tokenizer, model):
    simulate(monkeypatch, wrong_capture)
    with pytest.raises(RuntimeError, match=r"decoder='graph': recording .* is wrong: .*DIFFER.*'lean'"):
        run(FastRolloutEngine("graph"), model, tokenizer)


def test_a_later_span_that_fails_to_record_warns_once_and_the_next_rollouts_are_eager(
    monkeypatch, tokenizer, model
):
    """The first span checks out, a later one cannot be recorded: that rollout finishes with eager
    steps (one warning), and later rollouts use the lean loop without trying again."""

    def fails_after_first(self, span):
        if self.captures >= 1:
            raise RuntimeError("capture of a later span failed")
        return correct_capture(self, span)

    simulate(monkeypatch, fails_after_first)
    engine = FastRolloutEngine(span_block=8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run(engine, model, tokenizer, seed=1)
        later = run(engine, model, tokenizer, seed=2)
    found = graph_warnings(record)
    assert len(found) == 1 and "capture of a later span failed" in str(found[0].message)
    assert engine._static is None
    assert_same(later, run(FastRolloutEngine("lean"), model, tokenizer, seed=2))


def test_compare_logits_tolerance_by_dtype_and_nan_rules():
    eager = torch.tensor([[2.0, -40.0, 1.0]])
    # Tolerance: the dtype's relative tolerance times the largest |eager logit| (40 here).
    assert compare_logits(eager + 0.03, eager) == pytest.approx((0.03, 1e-3 * 40), rel=1e-5)
    max_diff, tol = compare_logits(eager.bfloat16() + 1.0, eager.bfloat16())
    assert (max_diff, tol) == (1.0, pytest.approx(5e-2 * 40))
    # Small logits: the scale is at least 1.
    assert compare_logits(torch.zeros(1, 3), torch.zeros(1, 3)) == (0.0, pytest.approx(1e-3))
    # NaN on both sides agrees; on one side only it is an infinite difference.
    both = torch.tensor([[float("nan"), 1.0]])
    assert compare_logits(both, both)[0] == 0.0
    assert math.isinf(compare_logits(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[0.0, 1.0]]))[0])
    check = GraphCheck(torch.device("cpu"), max_diff=0.05, tolerance=0.04, seconds=0.012)
    assert (
        not check.passed and "DIFFER (max |logit difference| 0.05, tolerance 0.04; 12 ms)" in check.describe()
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_on_cuda_the_real_recording_passes_its_check(tokenizer, caplog, dtype):
    """Where a GPU exists: the default engine records real CUDA graphs, their check passes (logged, no
    warning), and the rollout is the static steps' one run eagerly on the same device."""
    model = build_tiny_model(tokenizer, arch="qwen2").to("cuda", dtype)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True).to("cuda")
    greedy = SamplingConfig(max_completion_length=12, do_sample=False)

    def rollout(engine):
        request = RolloutRequest(enc.input_ids, enc.attention_mask, num_generations=2, sampling=greedy,
                                 eos_token_ids=[1], pad_token_id=0, seed=0)  # fmt: skip
        return engine.generate(model, request)

    engine = FastRolloutEngine()
    with caplog.at_level(logging.INFO, logger=CHECK_LOG), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        graphed = rollout(engine)
    assert graph_warnings(record) == []
    assert any(
        "CUDA graph check on cuda" in r.getMessage() and " agree " in r.getMessage() for r in caplog.records
    )
    assert engine._static is not None and engine._static.graphs and engine._static.captures >= 1
    torch.testing.assert_close(graphed.completion_ids, rollout(FastRolloutEngine("static")).completion_ids)
