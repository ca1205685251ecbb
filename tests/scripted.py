"""A rollout engine that returns completions written in advance, for evaluation figures checked by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from grpo_lightning.rollout.engine import Rollout, RolloutRequest, completion_masks

#: prompt -> (answer, source, greedy completion, the 4 sampled completions)
PROBLEMS = {
    "1+1=": ("2", "add", "2", ["2", "2", "3", "x"]),  # 2 of 4 right; one sample gives no number
    "2+3=": ("5", "add", "4", ["4", "4", "4", "5"]),  # 1 of 4 right, outvoted
    "7-4=": ("3", "sub", "3", ["3", "1", "2", "9"]),  # 1 of 4 right, a four-way tie
}


class ScriptedEngine:
    """Greedy calls get ``greedy[prompt]``; sampled calls get ``samples[prompt]`` (``num_generations`` of them)."""

    def __init__(self, tokenizer, greedy: Mapping[str, str], samples: Mapping[str, Sequence[str]]) -> None:
        self.tokenizer = tokenizer
        self.greedy = dict(greedy)
        self.samples = {k: list(v) for k, v in samples.items()}

    def generate(self, model, request: RolloutRequest) -> Rollout:
        r = request
        prompt_ids, prompt_mask, num_generations, sampling = r.prompt_ids, r.prompt_mask, r.num_generations, r.sampling
        eos_token_ids, pad_token_id, mask_truncated = r.eos_token_ids, r.pad_token_id, r.mask_truncated
        prompts = self.tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
        texts = []
        for prompt in prompts:
            if sampling.do_sample:
                assert len(self.samples[prompt]) == num_generations
                texts += self.samples[prompt]
            else:
                texts += [self.greedy[prompt]] * num_generations
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [eos_token_ids[0]] for t in texts]
        width = max(map(len, rows))
        completion_ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        mask, truncated, lengths = completion_masks(
            completion_ids, eos_token_ids, sampling.max_completion_length, mask_truncated
        )
        ids = prompt_ids.repeat_interleave(num_generations, dim=0)
        return Rollout(
            ids,
            prompt_mask.repeat_interleave(num_generations, dim=0),
            completion_ids,
            mask,
            truncated,
            lengths,
        )


def scripted_engine(tokenizer) -> ScriptedEngine:
    return ScriptedEngine(
        tokenizer, {p: v[2] for p, v in PROBLEMS.items()}, {p: v[3] for p, v in PROBLEMS.items()}
    )


def rows(prompts: Sequence[str] = tuple(PROBLEMS), with_source: bool = True) -> list[dict[str, Any]]:
    out = []
    for p in prompts:
        row = {"prompt": p, "answer": PROBLEMS[p][0]}
        if with_source:
            row["source"] = PROBLEMS[p][1]
        out.append(row)
    return out


def loader(data: list[dict[str, Any]], batch_size: int = 2) -> DataLoader:
    """Batches of prompt texts and columns (the module tokenizes the prompts)."""
    return DataLoader(
        data, batch_size=batch_size, shuffle=False, collate_fn=lambda b: {k: [r[k] for r in b] for k in b[0]}
    )
