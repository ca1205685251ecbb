"""Operations and CPU time per decoded token of the fast engine's loop, on the quickstart's shape.

    python benchmarks/bench_decode_ops.py                     # this checkout
    PYTHONPATH=../old-checkout python benchmarks/bench_decode_ops.py   # another one, to compare

A Qwen2 of the built-in model's size (hidden 256, 4 layers, 99-token vocabulary), 16 prompts x 8
generations, EOS blocked so every row decodes every step, one thread. Operations are counted at
torch's dispatcher (every op, views included) as the difference between 16- and 8-token rollouts, so
the prefill cancels out; the CPU time per token is the median of ``--repeats`` 48-token rollouts
(process CPU time, which a busy machine inflates far less than wall-clock time).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import grpo_lightning
from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.rollout.engine import RolloutRequest, SamplingConfig
from grpo_lightning.rollout.engines import FastRolloutEngine


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decoder", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, arch="qwen2", hidden_size=256, num_layers=4)
    enc = tokenizer(["Q: What is 12 + 7 - 3?\nA: "] * 16, return_tensors="pt", padding=True)
    engine = FastRolloutEngine(args.decoder)

    def rollout(tokens: int) -> None:
        sampling = SamplingConfig(max_completion_length=tokens, generation_kwargs={"min_new_tokens": tokens})
        request = RolloutRequest(enc.input_ids, enc.attention_mask, num_generations=8, sampling=sampling,
                                 eos_token_ids=[1], pad_token_id=0, seed=0)  # fmt: skip
        engine.generate(model, request)

    counts = {}
    for tokens in (8, 16):
        with OpCounter() as counter:
            rollout(tokens)
        counts[tokens] = counter.ops
    per_token = {k: (counts[16][k] - counts[8][k]) / 8 for k in counts[16]}
    rollout(48)  # warm-up
    cpu = []
    for _ in range(args.repeats):
        start = time.process_time()
        rollout(48)
        cpu.append((time.process_time() - start) / 48)
    top = ", ".join(f"{k} {v:g}" for k, v in sorted(per_token.items(), key=lambda kv: -kv[1])[:8])
    print(f"{grpo_lightning.__file__}: {sum(per_token.values()):.0f} ops per token ({top}, ...); "
          f"CPU {statistics.median(cpu) * 1000:.2f} ms per token (128 rows; median of {args.repeats})")  # fmt: skip


if __name__ == "__main__":
    main()
