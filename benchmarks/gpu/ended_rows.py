"""What dropping ended rows saves: the lean loop with and without it, alternating, on one greedy job
whose completions end at spread-out lengths.

    python benchmarks/gpu/ended_rows.py [--device cpu] [--model 23m] [--pairs 3] [--eos-ids 4]

Greedy decoding gives both variants the same tokens and lengths, so the difference is only the work
spent on rows that already ended. The EOS ids are the ``--eos-ids`` tokens that a reference rollout
(no EOS) emits most often after its first 8 tokens and never in them: rows then end wherever they
first emit one, or run to the end.
Prints each rollout's wall and process CPU time (the CPU time is steadier on a shared machine), the
medians and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]

import torch  # noqa: E402
from limits import sync  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--eos-ids", type=int, default=4, help="how many token ids end a row")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="23m", help="a model of benchmarks/workloads.py")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (one is steadiest on a busy machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from workloads import MODELS, build_model, build_tokenizer, make_prompts

    from grpo_lightning.rollout.engine import RolloutRequest, SamplingConfig
    from grpo_lightning.rollout.engines import FastRolloutEngine

    device = torch.device(args.device)
    spec = MODELS[args.model]
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer).to(device)
    enc = tokenizer(make_prompts(args.prompts), return_tensors="pt", padding=True)
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    greedy = SamplingConfig(max_completion_length=args.max_new_tokens, do_sample=False)

    def request(eos: list[int]) -> RolloutRequest:
        return RolloutRequest(
            ids, mask, num_generations=1, sampling=greedy, eos_token_ids=eos,
            pad_token_id=tokenizer.pad_token_id, seed=0,
        )  # fmt: skip

    def rollout(eos: list[int], drop: bool) -> tuple[float, float, torch.Tensor]:
        sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        out = FastRolloutEngine("lean", drop_ended_rows=drop).generate(model, request(eos))
        sync(device)
        return time.perf_counter() - start, time.process_time() - cpu, out.lengths

    _, _, _ = rollout([tokenizer.eos_token_id], drop=True)  # warm-up
    reference = FastRolloutEngine("lean").generate(model, request([tokenizer.eos_token_id]))
    later = reference.completion_ids[:, 8:].flatten().bincount(minlength=len(tokenizer)).float()
    later[reference.completion_ids[:, :8].flatten()] = -1  # no row may end in its first 8 tokens
    common = later.topk(args.eos_ids).indices.tolist()
    eos = [tokenizer.eos_token_id, *common]
    wall: dict[str, list[float]] = {"drop ended rows": [], "keep every row": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    lengths: dict[str, torch.Tensor] = {}
    for pair in range(args.pairs):
        for name in wall:
            seconds, cpu_seconds, lengths[name] = rollout(eos, drop=name == "drop ended rows")
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
            print(f"pair {pair}: {name}: {seconds:.3f} s wall, {cpu_seconds:.3f} s CPU")
    if not torch.equal(lengths["drop ended rows"], lengths["keep every row"]):
        raise RuntimeError("greedy lengths differ between the two variants")
    spread = lengths["keep every row"].float()
    print(f"{len(spread)} rows, lengths: mean {spread.mean():.1f}, min {int(spread.min())}, "
          f"max {int(spread.max())} (of {args.max_new_tokens})")  # fmt: skip
    for label, table in (("wall", wall), ("CPU", cpu)):
        drop, keep = (statistics.median(table[k]) for k in table)
        print(f"median {label}: drop {drop:.3f} s, keep {keep:.3f} s, keep / drop = {keep / drop:.2f}x")


if __name__ == "__main__":
    main()
