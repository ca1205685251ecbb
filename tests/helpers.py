"""Shared test helpers: tiny models, a small prompt DataModule, simple rewards, a trainer factory."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import DataLoader

from grpo_lightning.data.prompts import ResumableDataLoader
from grpo_lightning.hf.models import eos_token_ids
from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model
from grpo_lightning.module import GRPOModule
from grpo_lightning.rewards import answers
from grpo_lightning.rewards.scorer import RewardScorer
from grpo_lightning.rollout.engine import (
    HFGenerateEngine,
    Rollout,
    RolloutRequest,
    SamplingConfig,
    concat_rollouts,
)
from grpo_lightning.rollout.sampler import Sampler


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the test machines' cores are shared: import this
    autouse fixture into a test module (``from helpers import one_thread``) to use it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROMPTS = ["1+1=", "2+3=", "7-4=", "9+9=", "5-2=", "8+1=", "6+6=", "3-3="]


def tiny_tokenizer():
    return build_char_tokenizer(model_max_length=128)


def tiny_model(
    tokenizer=None,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 1,
    arch: str = "qwen2",
    tied: bool = True,
):
    """A randomly initialised 1-layer, 32-wide causal LM over the character vocabulary."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    return build_tiny_model(
        tokenizer,
        arch=arch,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        seed=seed,
    )


def save_tiny_policy(path):
    """A tiny random policy and its tokenizer saved as a model folder; returns ``path``."""
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _answer(prompt: str) -> str:
    """The value of a tiny sum like "7-4=" ("" for any other prompt)."""
    expression = prompt.rstrip("=")
    if expression and all(ch in "0123456789+-" for ch in expression):
        return str(eval(expression))
    return ""


class PromptsDataModule(pl.LightningDataModule):
    """Batches in the package's format: prompt texts, left-padded ids, and an ``answer`` column."""

    def __init__(
        self,
        tokenizer,
        prompts: Sequence[str] = PROMPTS,
        batch_size: int = 2,
        val_prompts: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.val_prompts = list(val_prompts if val_prompts is not None else prompts[:2])
        self.batch_size = batch_size

    def _collate(self, rows: list[str]) -> dict[str, Any]:
        enc = self.tokenizer(rows, return_tensors="pt", padding=True, add_special_tokens=False)
        answers = [_answer(p) for p in rows]
        return {
            "prompt": rows,
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "answer": answers,
        }

    def train_dataloader(self) -> DataLoader:
        # Resumable: a run resumed mid-epoch continues with the next batch, as an uninterrupted run would.
        # On several devices (with Trainer(use_distributed_sampler=False)) rank r takes prompts r, r+W, ...:
        # the i-th global batch then holds the same prompts as with one device.
        trainer = self.trainer
        prompts = self.prompts
        if (
            trainer is not None
            and trainer.world_size > 1
            and not trainer._accelerator_connector.use_distributed_sampler
        ):
            prompts = prompts[trainer.global_rank :: trainer.world_size]
        return ResumableDataLoader(
            prompts, batch_size=self.batch_size, shuffle=False, collate_fn=self._collate
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_prompts, batch_size=self.batch_size, shuffle=False, collate_fn=self._collate
        )


def prompt_batch(tokenizer, prompts: Sequence[str] = PROMPTS[:2]) -> dict[str, Any]:
    return PromptsDataModule(tokenizer, prompts)._collate(list(prompts))


class TokenShare:
    """Reward: the share of completion tokens (EOS excluded) equal to ``char``. Learnable from scratch."""

    def __init__(self, char: str = "7") -> None:
        self.char = char
        self.__name__ = "token_share"

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        return [c.count(self.char) / max(len(c), 1) for c in completions]


def char_code_mean(prompts, completions, **columns) -> list[float | None]:
    """A dense reward: the mean character code of the completion / 128. Sampled completions almost
    never tie, so every group has a spread and every step has a gradient."""
    return [sum(map(ord, c)) / (128 * max(len(c), 1)) for c in completions]


def answer_reward(prompts, completions, answer, **columns) -> list[float | None]:
    """1.0 when the completion starts with the answer."""
    return [1.0 if c.strip().startswith(a) else 0.0 for c, a in zip(completions, answer, strict=True)]


def make_module(tokenizer=None, model=None, **overrides: Any) -> GRPOModule:
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    settings: dict[str, Any] = {
        "reward_funcs": [char_code_mean],
        "num_generations": 4,
        "max_completion_length": 8,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "seed": 0,
    }
    if overrides.get("optimizer") is not None:
        del settings["learning_rate"]  # the optimizer callable carries its own (the module refuses both)
    settings.update(overrides)
    return GRPOModule(model if model is not None else tiny_model(tokenizer), tokenizer=tokenizer, **settings)


def tiny_sampler(
    scorer: RewardScorer,
    num_generations: int = 3,
    max_completion_length: int = 6,
    mask_truncated: bool = False,
) -> Sampler:
    """A sampler over a tiny random policy and the character tokenizer (no module, no Trainer)."""
    tok = tiny_tokenizer()
    policy = tiny_model(tok)
    sampling = SamplingConfig(max_completion_length=max_completion_length)
    return Sampler(
        policy,
        tok,
        HFGenerateEngine(),
        eos_token_ids(policy, tok),
        scorer,
        sampling,
        num_generations,
        mask_truncated,
    )


def make_trainer(max_steps: int = 2, **overrides: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    settings.update(overrides)
    return pl.Trainer(**settings)


def weights(module: GRPOModule) -> dict[str, torch.Tensor]:
    """A copy of the policy's weights (gathered in full when FSDP2 shards them)."""
    state = module.policy.state_dict()
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()
    }


class PerPromptEngine(HFGenerateEngine):
    """Seeds each prompt's sampling from the prompt itself: the same prompt gets the same completions on
    any rank and in any batch, which makes a 1-device and a 2-device run sample identically."""

    def generate(self, model, request: RolloutRequest) -> Rollout:
        parts = []
        for i in range(request.prompt_ids.shape[0]):
            ids = request.prompt_ids[i : i + 1][:, request.prompt_mask[i].bool()]
            prompt_seed = int(sum(int(t) * 31**k for k, t in enumerate(ids[0].tolist())) % (2**31))
            one = dataclasses.replace(
                request, prompt_ids=ids, prompt_mask=torch.ones_like(ids), seed=prompt_seed
            )
            parts.append(super().generate(model, one))
        return concat_rollouts(parts, pad_token_id=request.pad_token_id)


#: What a launcher (Lightning, torchrun, srun) sets for its processes: a child started by a test must
#: not inherit them from the test's own environment.
LAUNCHER_VARIABLES = (
    "LOCAL_RANK",
    "NODE_RANK",
    "RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def child_env(*paths: str) -> dict[str, str]:
    """The environment for a test's subprocess: ``paths`` first on PYTHONPATH, no launcher variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARIABLES and not k.startswith(("SLURM_", "TORCHELASTIC_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    """A TCP port nobody listens on now, for a process group's rendezvous (a fixed or pid-derived
    port can collide with another test's group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_executed_lines(files: set[str], fn, *args) -> int:
    """Python lines executed in ``files`` while running ``fn(*args)``: a deterministic measure of work,
    for tests that an algorithm is linear (a wall-clock time would depend on the machine's load)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename not in files:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return count


def assert_same_fields(a: Any, b: Any, fields: Sequence[str]) -> None:
    """``a`` and ``b`` (two rollouts) hold bit-identical tensors in each of ``fields``."""
    for name in fields:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)


@contextlib.contextmanager
def answers_first_window(size: int):
    """Start the scan for the last box from the end with a window of ``size`` characters (it grows 4x
    at a time): a small window makes it grow within short test inputs too."""
    saved = answers._FIRST_WINDOW
    answers._FIRST_WINDOW = size
    try:
        yield
    finally:
        answers._FIRST_WINDOW = saved


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensors allocated by ops run inside it (forward and backward), live at once.

    A storage counts from the op that creates it until it is freed (PyTorch keeps one Python object
    per live storage, so a finalizer on it fires on the free). Storages that already existed (the
    inputs, the parameters) and views of them count 0. No timing, no allocator internals.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _track(self, t: torch.Tensor, allocated: bool) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.sizes:
            return
        self.sizes[key] = storage.nbytes() if allocated else 0
        self.live += self.sizes[key]
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, allocated=False)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, allocated=True)
        return out
