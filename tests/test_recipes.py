"""The tiny-math SFT recipe (a shortened run) and the model it ships."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_lightning.data.synthetic import generate_problems
from grpo_lightning.hf.models import load_tokenizer, resolve_model_path
from grpo_lightning.hf.tiny import build_char_tokenizer
from grpo_lightning.recipes.tiny_math_sft import (
    PROMPT_TEMPLATE,
    extract_answer,
    greedy_accuracy,
    sft_batch,
    train,
)

SHORT = {"steps": 12, "batch_size": 16, "hidden_size": 32, "num_layers": 1, "intermediate_size": 64, "log_every": 0}
DATA = {"min_steps": 1, "max_steps": 1, "max_operand": 9}


def test_sft_batch_puts_the_loss_on_the_solution_and_eos_only() -> None:
    tok = build_char_tokenizer()
    rows = [
        {"question": "What is 2 + 3?", "solution": "2+3=5 #### 5"},
        {"question": "What is 12 + 7 - 3?", "solution": "12+7=19, 19-3=16 #### 16"},
    ]
    batch = sft_batch(tok, rows)
    prompt = PROMPT_TEMPLATE.format(question=rows[0]["question"])
    n_prompt, n_target = len(prompt), len(rows[0]["solution"]) + 1  # one token per character, plus EOS
    labels = batch["labels"][0]
    assert (labels[:n_prompt] == -100).all()
    assert tok.decode(labels[n_prompt : n_prompt + n_target]) == rows[0]["solution"] + tok.eos_token
    assert (labels[n_prompt + n_target :] == -100).all() and (batch["attention_mask"][0, n_prompt + n_target :] == 0).all()
    assert batch["attention_mask"][1].all()  # the longest row has no padding


def test_extract_answer() -> None:
    assert extract_answer("12+7=19, 19-3=16 #### 16") == "16"
    assert extract_answer("5-8=-3 #### -3 and more") == "-3"
    assert extract_answer("12+7=19") is None


def test_a_short_run_learns_saves_compactly_and_reloads_as_float32(tmp_path) -> None:
    model, tok = train(tmp_path, data=DATA, num_problems=400, lr=3e-3, warmup=2, **SHORT)
    rows = generate_problems(32, seed=7, **DATA)
    untrained, _ = train(None, data=DATA, num_problems=400, stop_at=0, **SHORT)
    with torch.no_grad():
        batch = sft_batch(tok, rows)
        assert model(**batch).loss < untrained(**batch).loss  # twelve steps already lower the loss

    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / name).is_file(), name
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.eos_token_id and generation["pad_token_id"] == tok.pad_token_id

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.dtype == torch.float32  # stored in bfloat16, loaded as float32
    tokenizer = load_tokenizer(None, str(tmp_path))
    text = PROMPT_TEMPLATE.format(question="What is 12 + 7 - 3?")
    assert tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    plain = AutoTokenizer.from_pretrained(tmp_path)  # as a user loads it: the same ids
    assert plain(text)["input_ids"] == tok(text)["input_ids"] and len(plain(text)["input_ids"]) == len(text)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    ids = torch.tensor([tok(text)["input_ids"]])
    for p, q in zip(reloaded.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q.to(torch.bfloat16).float(), rtol=0, atol=0)  # bf16-rounded weights
    assert torch.isfinite(reloaded(ids).logits).all()

    # Same seed, same weights (``model`` was rounded to bfloat16 when saved; ``again`` was not saved).
    again, _ = train(None, data=DATA, num_problems=400, lr=3e-3, warmup=2, **SHORT)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(p, q.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_stop_at_ends_early_on_the_full_runs_schedule() -> None:
    """Stopping at step 3 of 40 gives the weights a longer run has at its step 3 (same data, same LR)."""
    settings = {**SHORT, "steps": 40, "data": DATA, "num_problems": 400, "lr": 3e-3, "warmup": 2, "eval_size": 4}
    snapshots = {}

    def keep(step: int, model: torch.nn.Module, tokenizer: object) -> None:
        snapshots[step] = [p.detach().clone() for p in model.parameters()]

    train(None, stop_at=6, eval_every=3, callback=keep, **settings)
    early, _ = train(None, stop_at=3, **settings)
    for p, q in zip(early.parameters(), snapshots[3], strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert any(not torch.equal(p, q) for p, q in zip(snapshots[3], snapshots[6], strict=True))


def test_greedy_accuracy_scores_known_answers() -> None:
    """A model that always writes "#### 5": right exactly on the problems whose answer is 5."""
    tok = build_char_tokenizer()

    class Fixed(torch.nn.Module):
        training = False

        def generate(self, input_ids, max_new_tokens, num_return_sequences=1, **_):
            rows = input_ids.repeat_interleave(num_return_sequences, dim=0)
            reply = torch.tensor(tok("#### 5")["input_ids"] + [tok.eos_token_id]).expand(len(rows), -1)
            return torch.cat([rows, reply], dim=1)

        def train(self, mode: bool = True) -> Fixed:
            return self

    rows = [{"question": "What is 2 + 3?", "answer": "5"}, {"question": "What is 2 + 2?", "answer": "4"}] * 3
    assert greedy_accuracy(Fixed(), tok, rows, batch_size=4) == pytest.approx(0.5)
    assert greedy_accuracy(Fixed(), tok, rows, batch_size=4, num_samples=3) == pytest.approx(0.5)


def test_the_shipped_model_solves_problems_like_its_training_data() -> None:
    path = resolve_model_path("builtin:tiny-math")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = load_tokenizer(None, path)
    rows = generate_problems(100, seed=4242, min_steps=1, max_steps=2, max_operand=10)
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    assert greedy_accuracy(model, tokenizer, rows) > 0.6
