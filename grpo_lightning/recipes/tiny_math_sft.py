"""Recipe: the tiny math model the quickstart starts from, trained from scratch by SFT on CPU.

    python -m grpo_lightning.recipes.tiny_math_sft --out tiny-math \
        --steps 750 --stop-at 300 --max-steps 3 --max-operand 10 --num-problems 48000 --threads 1

Model: a character-level Qwen2 causal LM from ``grpo_lightning.hf.tiny`` (hidden 256, 4 layers, 8 heads
/ 4 KV heads, MLP 512: 2.4M parameters).
Data: 48,000 synthetic problems (``generate_problems``, seed 0) with 1 to 3 operations on operands
up to 10, prompt ``PROMPT_TEMPLATE`` around the question, target = worked solution + EOS, loss on
the target only; batches of 64, reshuffled every epoch.
Settings: AdamW (lr 2e-3, betas 0.9/0.98, weight decay 0.01), 100 warmup steps, cosine decay over
``--steps``; ``--stop-at`` ends training early (the schedule still spans ``--steps``). The shipped
model stops at step 300 of 750: greedy about 62% on held-out 3-operation problems and 89% pass@8,
so about three groups in four have mixed rewards, the start GRPO needs. Continuing the SFT instead
reaches about 85% greedy by step 450: this checkpoint is a starting point for the GRPO demo, not
the best SFT can do.
Saving: weights stored in bfloat16 (half the size), ``config.json`` says float32, so
``from_pretrained`` loads a float32 model. About 25 minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpo_lightning.data.synthetic import generate_problems
from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.hf.tokenizer_io import save_tokenizer

PROMPT_TEMPLATE = "Q: {question}\nA: "
ANSWER = re.compile(r"####\s*(-?\d+)")


def sft_batch(
    tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, str]], template: str = PROMPT_TEMPLATE
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` [B, T]; labels are -100 on prompt and padding."""
    prompts = tokenizer([template.format(question=r["question"]) for r in rows], add_special_tokens=False)
    targets = tokenizer([r["solution"] for r in rows], add_special_tokens=False)
    seqs = [p + t + [tokenizer.eos_token_id] for p, t in zip(prompts.input_ids, targets.input_ids, strict=True)]
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (seq, p) in enumerate(zip(seqs, prompts.input_ids, strict=True)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = input_ids[i, len(p) : len(seq)]
    # The pad id never occurs inside text, so it marks the padding exactly.
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def extract_answer(completion: str) -> str | None:
    """The integer after the first ``####``, or None."""
    match = ANSWER.search(completion)
    return match.group(1) if match else None


@torch.no_grad()
def greedy_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, str]],
    *,
    template: str = PROMPT_TEMPLATE,
    batch_size: int = 100,
    max_new_tokens: int = 64,
    num_samples: int = 1,
    temperature: float = 1.0,
) -> float:
    """Share of problems solved: greedy pass@1 when ``num_samples == 1``, else sampled pass@``num_samples``
    (temperature 1). Batched, left-padded HF ``generate``."""
    was_training = model.training
    model.eval()
    solved = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        enc = tokenizer(
            [template.format(question=r["question"]) for r in chunk],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        sample = num_samples > 1
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=1.0 if sample else None,
            top_k=0 if sample else None,
            num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        for i, row in enumerate(chunk):
            group = texts[i * num_samples : (i + 1) * num_samples]
            solved += any(extract_answer(t) == row["answer"] for t in group)
    model.train(was_training)
    return solved / max(len(rows), 1)


def train(
    out: str | Path | None,
    *,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: int = 100,
    seed: int = 0,
    hidden_size: int = 256,
    num_layers: int = 4,
    intermediate_size: int = 512,
    data: dict | None = None,
    num_problems: int | None = None,
    eval_size: int = 200,
    eval_every: int = 0,
    log_every: int = 50,
    callback=None,
    stop_at: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Train the tiny math model; save it with ``save_pretrained`` into ``out`` (skip when None)."""
    torch.manual_seed(seed)
    data = data or {"min_steps": 1, "max_steps": 2, "max_operand": 20, "operations": "+-"}
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(
        tokenizer,
        arch="qwen2",
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=hidden_size // 32,
        num_kv_heads=max(hidden_size // 64, 1),
        intermediate_size=intermediate_size,
        seed=seed,
    )
    problems = generate_problems(num_problems or steps * batch_size, seed=seed, **data)
    # A fixed pool of worked solutions, reshuffled every epoch.
    order: list[int] = []
    shuffler = torch.Generator().manual_seed(seed)
    # Held out by seed: a different seed of the same generator (overlap is rare and harmless for a smoke figure).
    held_out = generate_problems(eval_size, seed=seed + 10_000, **data)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    model.train()
    t0 = time.perf_counter()
    for step in range(stop_at if stop_at is not None else steps):
        while len(order) < batch_size:
            order += torch.randperm(len(problems), generator=shuffler).tolist()
        batch = sft_batch(tokenizer, [problems[i] for i in order[:batch_size]])
        del order[:batch_size]
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1} loss {loss.item():.4f} {time.perf_counter() - t0:.0f}s", flush=True)
        if eval_every and (step + 1) % eval_every == 0:
            acc = greedy_accuracy(model, tokenizer, held_out)
            print(f"step {step + 1} held-out greedy accuracy {acc:.3f}", flush=True)
            if callback is not None:
                callback(step + 1, model, tokenizer)
    if out is not None:
        save_compact(model, tokenizer, out)
    return model, tokenizer


def save_compact(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | Path) -> None:
    """``save_pretrained`` with bfloat16 weights and a float32 ``config.json`` (loads as float32); the
    tokenizer is saved so that plain ``AutoTokenizer`` loads it with the same ids."""
    model.to(torch.bfloat16).save_pretrained(out)
    model.to(torch.float32)
    model.config.dtype = torch.float32
    model.config.to_json_file(str(Path(out) / "config.json"))
    model.generation_config.save_pretrained(out)
    save_tokenizer(tokenizer, out)  # after config.json: AutoTokenizer picks its class from the model type


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=512)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--stop-at", type=int, default=None, help="end training at this step")
    parser.add_argument("--min-steps", type=int, default=1, help="fewest operations per problem")
    parser.add_argument("--max-steps", type=int, default=2, help="most operations per problem")
    parser.add_argument("--max-operand", type=int, default=20)
    parser.add_argument("--num-problems", type=int, default=None, help="pool size (default steps x batch)")
    parser.add_argument("--threads", type=int, default=2)
    # Every option is a keyword of train() of the same name, apart from the problem shape (its data dict).
    options = vars(parser.parse_args(argv))
    torch.set_num_threads(options.pop("threads"))
    data = {key: options.pop(key) for key in ("min_steps", "max_steps", "max_operand")}
    train(options.pop("out"), data=data, **options)

if __name__ == "__main__":
    main()
