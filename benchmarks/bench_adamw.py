"""AdamW's three implementations timed on the parameters of the models the benchmarks train.

    python benchmarks/bench_adamw.py                  # builtin:tiny-math and the 3m / 23m workloads
    python benchmarks/bench_adamw.py --threads 1 --steps 200

Each implementation (torch's per-tensor loop ``single_tensor``, the multi-tensor ``foreach``, the
``fused`` kernel) steps an AdamW over copies of the model's parameters with fixed random gradients,
weight decay on matrices as the module's default optimizer does; the median of ``--repeats`` timings
of ``--steps`` steps is reported per step, with the one ``adamw_implementation`` picks marked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import MODELS, build_model, build_tokenizer

from grpo_lightning.hf.models import load_policy
from grpo_lightning.training.optim import adamw_implementation

KERNELS = {"single_tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def parameters(name: str) -> list[nn.Parameter]:
    """Fresh trainable copies of the named model's parameters, each with a fixed random gradient."""
    if name == "tiny-math":
        model = load_policy("builtin:tiny-math")
    else:
        spec = MODELS[name]
        model = build_model(spec, build_tokenizer(spec), seed=0)
    params = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    return params


def time_kernel(params: list[nn.Parameter], kernel: dict[str, bool], steps: int) -> float:
    """Seconds per ``optimizer.step()`` (after 3 warm-up steps)."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-4, **kernel)
    for _ in range(3):
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny-math,3m,23m")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    for name in args.models.split(","):
        params = parameters(name)
        size = sum(p.numel() for p in params)
        chosen = adamw_implementation(params)
        chosen_name = next(k for k, v in KERNELS.items() if v == chosen) if chosen else "single_tensor"
        times = {k: [] for k in KERNELS}
        for _ in range(args.repeats):  # interleaved, so a slow phase of the machine hits all three
            for kernel, kwargs in KERNELS.items():
                times[kernel].append(time_kernel(params, kwargs, args.steps))
        base = statistics.median(times["single_tensor"])
        print(f"\n{name}: {size / 1e6:.1f}M parameters in {len(params)} tensors")
        for kernel, values in times.items():
            ms = statistics.median(values) * 1000
            mark = "  <- default" if kernel == chosen_name else ""
            print(f"  {kernel:<14}{ms:8.2f} ms/step  {base * 1000 / ms:5.2f}x{mark}")


if __name__ == "__main__":
    main()
