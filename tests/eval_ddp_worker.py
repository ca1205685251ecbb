"""Validates scripted completions on one or two processes; run as a script by test_evaluation_ddp.py
(``python eval_ddp_worker.py OUT DEVICES``). Rank 0 writes the validation metrics to OUT as JSON.

With two devices, Lightning's distributed sampler gives rank 0 the problems 0 and 2 and rank 1 the
problems 1 and 3: in the first batch each rank sees a source the other does not.
"""

from __future__ import annotations

import json
import sys

import torch
from helpers import make_module, make_trainer, tiny_tokenizer
from scripted import PROBLEMS, ScriptedEngine, loader

# prompt -> (answer, source, greedy, samples); the scripted problems and one more
SCRIPT = {**PROBLEMS, "9-9=": ("0", "sub", "0", ["0", "0", "1", "1"])}
ORDER = ["1+1=", "7-4=", "2+3=", "9-9="]  # sources add, sub, add, sub


def validate(devices: int) -> dict[str, float]:
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    engine = ScriptedEngine(tok, {p: v[2] for p, v in SCRIPT.items()}, {p: v[3] for p, v in SCRIPT.items()})
    module = make_module(
        tok, reward_funcs=["gsm8k_accuracy_flexible"], val_num_samples=4, rollout_engine=engine
    )
    trainer = make_trainer(devices=devices, strategy="ddp" if devices > 1 else "auto", limit_val_batches=None)
    data = [{"prompt": p, "answer": SCRIPT[p][0], "source": SCRIPT[p][1]} for p in ORDER]
    (metrics,) = trainer.validate(module, dataloaders=loader(data, batch_size=1), verbose=False)
    return metrics if trainer.is_global_zero else {}


if __name__ == "__main__":
    out, devices = sys.argv[1], int(sys.argv[2])
    metrics = validate(devices)
    if metrics:
        with open(out, "w") as f:
            json.dump(metrics, f)
