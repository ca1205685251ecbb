"""The GPU decoding path's logic, checked on CPU: static-shape steps, graph caching, dropping ended rows.

The CUDA recording itself needs a GPU (``test_gpu_cuda.py``); everything around it (which step is
recorded, when a recording is reused or redone, what a replay returns) runs here with a stand-in
recorder that, like a CUDA graph, refreshes one output tensor in place on every replay.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_fields
from torch.utils._python_dispatch import TorchDispatchMode

import grpo_lightning.rollout.engines.fast as fast_module
from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.logprobs import sequence_logprobs
from grpo_lightning.rollout.engine import HFGenerateEngine, RolloutRequest, SamplingConfig
from grpo_lightning.rollout.engines import FastRolloutEngine
from grpo_lightning.rollout.engines.decoders import LeanDecoder
from grpo_lightning.rollout.engines.graphed import (
    StaticStepDecoder,
    graph_unsupported_reason,
    model_fingerprint,
)

# Operations a CUDA graph cannot record: host reads of device values, outputs whose shape depends on
# values, and tensors made from Python data (a host-to-device copy at replay time).
NOT_CAPTURABLE = {"_local_scalar_dense", "nonzero", "masked_select", "unique_dim", "_unique2", "lift_fresh"}

# Widths 32 (the longest) and 14: padded to 32 either way with width_block=16.
PROMPTS = ["Compute 18 - 4 + 11 + 2, please.", "What is 5 + 9?", "3 + 3 =", "What is 12 + 7 - 3?"]
FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated", "lengths")


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def encode(tokenizer, prompts=PROMPTS):
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def run(engine, model, prompts, sampling, eos=(1,), generations=3, seed=0):
    ids, mask = prompts
    request = RolloutRequest(
        ids, mask, num_generations=generations, sampling=sampling, eos_token_ids=list(eos),
        pad_token_id=0, seed=seed,
    )  # fmt: skip
    return engine.generate(model, request)


def assert_same_rollout(a, b):
    assert_same_fields(a, b, FIELDS)


def mid_eos(model, prompts, sampling):
    """A token that greedy completions emit around their middle: as EOS, rows end at different steps."""
    ids = run(HFGenerateEngine(), model, prompts, sampling).completion_ids
    return int(ids[:, 3:10].flatten().bincount().argmax())


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("span_block", [1, 7, 64])
def test_static_steps_give_generates_greedy_tokens(tokenizer, arch, span_block):
    model = build_tiny_model(tokenizer, arch=arch)
    prompts = encode(tokenizer)
    greedy = SamplingConfig(max_completion_length=40, do_sample=False)
    eos = (1, mid_eos(model, prompts, greedy))
    slow = run(HFGenerateEngine(), model, prompts, greedy, eos=eos)
    fast = run(FastRolloutEngine("static", span_block=span_block), model, prompts, greedy, eos=eos)
    assert slow.lengths.min() < 40 and slow.truncated.any(), "rows should end at different steps"
    assert_same_rollout(fast, slow)


def test_static_steps_sample_exactly_what_the_lean_loop_samples(tokenizer):
    """Same seed, same draws: the static step computes the same logits (to float rounding) as the lean one."""
    model = build_tiny_model(tokenizer, arch="qwen2")
    prompts = encode(tokenizer)
    # Every row runs the full length (EOS blocked), so neither loop drops rows and the draws line up.
    sampling = SamplingConfig(
        max_completion_length=30, temperature=0.8, top_p=0.95, generation_kwargs={"min_new_tokens": 30}
    )
    lean = run(FastRolloutEngine("lean"), model, prompts, sampling, seed=4)
    static = run(FastRolloutEngine("static", span_block=8), model, prompts, sampling, seed=4)
    assert_same_rollout(static, lean)
    torch.testing.assert_close(static.sampling_logp, lean.sampling_logp, rtol=0, atol=1e-5)


class FakeGraph:
    """Stands in for ``torch.cuda.CUDAGraph`` on CPU: replay() refreshes the captured output in place."""

    def __init__(self, step, out):
        self.step, self.out = step, out

    def replay(self):
        self.out.copy_(self.step())


@pytest.fixture
def recorded(monkeypatch):
    """Graphs allowed on CPU, each "capture" recorded: returns the list of captured spans."""
    spans: list[int] = []

    def fake_capture(self, span):
        spans.append(span)
        self.captures += 1
        out = self._static_step(span)
        return FakeGraph(lambda: self._static_step(span), out), out

    monkeypatch.setattr(StaticStepDecoder, "_capture", fake_capture)
    monkeypatch.setattr(fast_module, "graph_unsupported_reason", lambda device, model: None)
    return spans


def test_graphs_are_captured_once_per_span_and_reused_by_later_rollouts(tokenizer, recorded):
    model = build_tiny_model(tokenizer, arch="qwen2")
    prompts = encode(tokenizer)
    assert prompts[0].shape[1] == 32
    # 24 tokens each (EOS blocked): 23 steps, at columns 32..54, attending to spans 40, 48 and 56.
    greedy = SamplingConfig(
        max_completion_length=24, do_sample=False, generation_kwargs={"min_new_tokens": 24}
    )
    engine = FastRolloutEngine(
        span_block=8
    )  # "auto": graphs, since the device check is patched to allow them
    first = run(engine, model, prompts, greedy)
    assert recorded == [40, 48, 56]
    assert_same_rollout(first, run(HFGenerateEngine(), model, prompts, greedy))
    buffers = engine._static._kv[0][0].data_ptr()

    # Shorter prompts (width 19, padded to 32): the same shapes, so the same buffers and graphs.
    shorter = encode(tokenizer, [p[:19] for p in PROMPTS])
    assert shorter[0].shape[1] == 19
    assert_same_rollout(run(engine, model, shorter, greedy), run(HFGenerateEngine(), model, shorter, greedy))
    assert recorded == [40, 48, 56] and engine._static._kv[0][0].data_ptr() == buffers

    # Weights changed in place (as an optimizer does): the replays read the new values.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    moved = run(engine, model, prompts, greedy)
    assert recorded == [40, 48, 56]
    assert_same_rollout(moved, run(HFGenerateEngine(), model, prompts, greedy))
    assert not torch.equal(moved.completion_ids, first.completion_ids), "the new weights should change tokens"

    # A parameter replaced by a new tensor: recorded addresses are stale, so everything starts afresh.
    model.model.norm.weight = torch.nn.Parameter(model.model.norm.weight.detach() * 3)
    replaced = run(engine, model, prompts, greedy)
    assert recorded == [40, 48, 56, 40, 48, 56]
    assert_same_rollout(replaced, run(HFGenerateEngine(), model, prompts, greedy))

    engine.release()  # buffers and graphs freed: the next rollout records again
    assert engine._static is None
    run(engine, model, prompts, greedy)
    assert recorded == [40, 48, 56] * 3


def test_buffers_made_under_inference_mode_are_not_reused_outside_it(tokenizer):
    """Lightning validates under ``torch.inference_mode``: tensors made there cannot be written to
    outside it, so a training rollout of the same shape must not reuse them."""
    model = build_tiny_model(tokenizer, arch="qwen2")
    prompts = encode(tokenizer)
    greedy = SamplingConfig(max_completion_length=8, do_sample=False)
    engine = FastRolloutEngine("static", span_block=8)
    with torch.inference_mode():
        first = run(engine, model, prompts, greedy)
    assert_same_rollout(run(engine, model, prompts, greedy), first)
    with torch.inference_mode():
        assert_same_rollout(run(engine, model, prompts, greedy), first)


def test_a_failed_capture_under_auto_warns_and_decodes_without_graphs(tokenizer, monkeypatch):
    def broken(self, span):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(StaticStepDecoder, "_capture", broken)
    monkeypatch.setattr(fast_module, "graph_unsupported_reason", lambda device, model: None)
    model = build_tiny_model(tokenizer, arch="qwen2")
    prompts = encode(tokenizer)
    greedy = SamplingConfig(max_completion_length=12, do_sample=False)
    with pytest.warns(RuntimeWarning, match="decoding without graphs"):
        got = run(FastRolloutEngine(), model, prompts, greedy)
    assert_same_rollout(got, run(HFGenerateEngine(), model, prompts, greedy))
    strict = StaticStepDecoder(model, graphs=True)  # what decoder="graph" builds: no fallback
    logits = strict.prefill(*prompts, 1, 4)
    with pytest.raises(RuntimeError, match="stream is capturing"):
        strict.step(logits.argmax(-1))


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("lora", [False, True])
def test_the_recorded_step_has_no_operation_a_cuda_graph_cannot_record(tokenizer, lora):
    model = build_tiny_model(tokenizer, arch="qwen2")
    if lora:
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
        )
    model.eval()
    decoder = StaticStepDecoder(model, graphs=False, span_block=8)
    with torch.no_grad():
        logits = decoder.prefill(*encode(tokenizer), 2, 8)
        decoder._token.copy_(logits.argmax(-1))
        decoder._column.fill_(decoder.column)
        with OpRecorder() as recorder:
            decoder._static_step(40)
    assert "mm" in recorder.ops or "addmm" in recorder.ops  # the recorder sees the step's operations
    assert not recorder.ops & NOT_CAPTURABLE, recorder.ops & NOT_CAPTURABLE


def test_graph_decoding_is_refused_with_the_reason_where_it_cannot_run(tokenizer):
    model = build_tiny_model(tokenizer, arch="qwen2")
    assert "CUDA" in graph_unsupported_reason(torch.device("cpu"), model)
    with pytest.raises(ValueError, match="decoder='graph' cannot run: CUDA graphs need a CUDA device"):
        run(FastRolloutEngine("graph"), model, encode(tokenizer), SamplingConfig(max_completion_length=4))
    gpt2 = build_tiny_model(tokenizer, arch="gpt2")
    with pytest.raises(ValueError, match="decoder='static' cannot run this model: model_type 'gpt2'"):
        run(FastRolloutEngine("static"), gpt2, encode(tokenizer), SamplingConfig(max_completion_length=4))
    quantized = build_tiny_model(tokenizer, arch="qwen2")
    packed = torch.nn.Parameter(
        torch.zeros(2, dtype=torch.uint8), requires_grad=False
    )  # as 4-bit layers store
    quantized.model.layers[0].mlp.up_proj.weight = packed
    assert "torch.uint8" in graph_unsupported_reason(torch.device("cpu"), quantized)
    with pytest.raises(ValueError, match="span_block=0"):
        FastRolloutEngine(span_block=0)


def test_adapter_switches_change_the_fingerprint(tokenizer):
    """A graph records one branch of a LoRA layer's Python code: switching the adapter must not reuse it."""
    peft = pytest.importorskip("peft")
    model = build_tiny_model(tokenizer, arch="qwen2")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    base = lora.get_base_model()
    on = model_fingerprint(base)
    with lora.disable_adapter():
        off = model_fingerprint(base)
    assert on != off and model_fingerprint(base) == on


def test_ended_rows_are_dropped_and_every_row_is_still_reported(tokenizer, monkeypatch):
    """Sampling with many EOS ids: rows end early, the decoder shrinks, and each reported token and
    log-prob still belongs to its row (the log-probs equal a fresh forward pass over the tokens)."""
    kept: list[int] = []
    keep = LeanDecoder.keep

    def spy(self, rows):
        kept.append(len(rows))
        keep(self, rows)

    monkeypatch.setattr(LeanDecoder, "keep", spy)
    model = build_tiny_model(tokenizer, arch="qwen2")
    prompts = encode(tokenizer)
    sampling = SamplingConfig(max_completion_length=24, temperature=1.0)
    eos = tuple(range(3, 60))  # most characters end a row: lengths spread over the first steps
    rollout = run(FastRolloutEngine("lean"), model, prompts, sampling, eos=eos, generations=6, seed=3)
    assert kept and kept == sorted(kept, reverse=True) and kept[0] <= 12, kept  # 24 rows, then half or fewer
    assert rollout.lengths.max() > rollout.lengths.min()
    k = rollout.completion_ids.shape[1]
    logp, _ = sequence_logprobs(model, rollout.input_ids, rollout.attention_mask, k)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(rollout.sampling_logp[mask], logp[mask], rtol=0, atol=1e-4)
    assert (rollout.completion_ids[~mask] == 0).all()

    kept.clear()
    run(
        FastRolloutEngine("lean", drop_ended_rows=False),
        model,
        prompts,
        sampling,
        eos=eos,
        generations=6,
        seed=3,
    )
    assert kept == []


def test_dropping_rows_keeps_greedy_tokens_equal_to_generate(tokenizer, monkeypatch):
    kept: list[int] = []
    keep = LeanDecoder.keep
    monkeypatch.setattr(LeanDecoder, "keep", lambda self, rows: (kept.append(len(rows)), keep(self, rows)))
    model = build_tiny_model(tokenizer, arch="llama")
    prompts = encode(tokenizer)
    greedy = SamplingConfig(max_completion_length=40, do_sample=False)
    eos = (1, mid_eos(model, prompts, greedy))
    assert_same_rollout(
        run(FastRolloutEngine("lean"), model, prompts, greedy, eos=eos),
        run(HFGenerateEngine(), model, prompts, greedy, eos=eos),
    )
    assert kept, "some rows should have been dropped"
