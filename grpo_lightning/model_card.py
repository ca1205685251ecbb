"""The model card (``README.md``) written into every exported model folder.

A Hugging Face model card: YAML front matter the Hub reads (``library_name``, ``pipeline_tag``,
``base_model``, ``tags``), then what the model is, how it was trained and how to load it with plain
``transformers``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
TAGS = ("grpo", "grpo-lightning")
DEFAULT_QUESTION = "What is 4 + 4 + 2 + 2?"
DEFAULT_EXAMPLE_PROMPT = f"Q: {DEFAULT_QUESTION}\nA: "
#: ``GRPOModule`` settings shown in a card's summary, when present.
SUMMARY_KEYS = (
    "num_generations",
    "max_completion_length",
    "temperature",
    "learning_rate",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "scale_rewards",
    "importance_sampling_level",
    "num_iterations",
    "steps_per_rollout",
    "lora",
)
# A Hub model id: "name" or "owner/name" (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelCardInfo:
    """What a model card says about an export; every field is optional.

    Args:
        base_model: the model training started from (a Hub id, a local path or ``"builtin:<name>"``);
            only a Hub id goes into the card's ``base_model`` metadata.
        repo_id: the Hub repository the folder is pushed to; the loading snippet names it (else the folder).
        dataset: the training data, in words or as a Hub id.
        reward_funcs: names of the reward functions.
        steps: optimizer steps trained.
        settings: a short summary of the training settings, ``{name: value}`` (see :func:`settings_summary`).
        metrics: final metrics, ``{name: value}`` (e.g. ``{"val/accuracy": 0.85}``).
        example_prompt: a prompt in the format the model was trained on, for the loading snippet.
    """

    base_model: str | None = None
    repo_id: str | None = None
    dataset: str | None = None
    reward_funcs: Sequence[str] = ()
    steps: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    example_prompt: str | None = None


def settings_summary(hparams: Mapping[str, Any], keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
    """The entries of ``hparams`` (e.g. ``GRPOModule.hparams``) named in ``keys``, in that order."""
    return {key: hparams[key] for key in keys if key in hparams}


def run_card_info(hparams: Mapping[str, Any], reward_names: Sequence[str], trainer: Any | None) -> ModelCardInfo:
    """A card's facts from a GRPOModule's ``hparams`` and reward names and, when a Trainer ran it,
    the optimizer steps, the last ``val/*`` and ``train/reward`` values, the data module's source
    and its first validation prompt (a prompt in the trained format, for the loading snippet)."""
    data = getattr(trainer, "datamodule", None)
    val = getattr(data, "val_dataset", None)
    metrics = trainer.callback_metrics if trainer is not None else {}
    model = hparams.get("model")
    return ModelCardInfo(
        base_model=model if isinstance(model, str) else None,
        dataset=getattr(data, "where", None),
        reward_funcs=list(reward_names),
        steps=trainer.global_step if trainer is not None else None,
        settings=settings_summary(hparams),
        metrics={k: float(v) for k, v in metrics.items() if k.startswith("val/") or k == "train/reward"},
        example_prompt=val[0]["prompt"] if val is not None and len(val) and "prompt" in val.column_names else None,
    )


def hub_model_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub model id; None for built-in aliases, existing local paths and None."""
    from grpo_lightning.models import BUILTIN_PREFIX  # models imports this module

    if not name or name.startswith(BUILTIN_PREFIX) or Path(name).expanduser().exists():
        return None
    return name if _HUB_ID.match(name) else None


def render_model_card(
    info: ModelCardInfo, location: str, *, adapter: bool = False, chat: bool = False
) -> str:
    """The card's text: YAML front matter and a Markdown body.

    ``location`` is what the loading snippet passes to ``from_pretrained`` when ``info.repo_id`` is
    unset; ``adapter`` = the folder holds a LoRA adapter (loaded with peft); ``chat`` = the tokenizer
    has a chat template (the snippet sends messages).
    """
    from huggingface_hub import ModelCardData

    base_id = hub_model_id(info.base_model)
    metadata = ModelCardData(
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        base_model=base_id,
        tags=list(TAGS),
    )
    name = info.repo_id.split("/")[-1] if info.repo_id else "GRPO-trained model"
    start = f" starting from `{info.base_model}`" if info.base_model else ""
    kind = "A LoRA adapter for a causal language model" if adapter else "A causal language model"
    lines = [
        "---",
        metadata.to_yaml(),
        "---",
        "",
        f"# {name}",
        "",
        f"{kind}, fine-tuned with GRPO (Group Relative Policy Optimization){start}, using grpo-lightning.",
        "",
        "## Training",
        "",
        *_training_lines(info),
        *_table("Final metrics", {k: _number(v) for k, v in info.metrics.items()}),
        "## How to load",
        "",
        *_loading_snippet(info.repo_id or location, info.example_prompt, adapter=adapter, chat=chat),
    ]
    return "\n".join(lines) + "\n"


def write_model_card(
    folder: str | Path, info: ModelCardInfo | None = None, *, adapter: bool = False, chat: bool = False
) -> Path:
    """Write ``README.md`` into ``folder`` (an empty ``ModelCardInfo`` when None); returns its path."""
    path = Path(folder) / CARD_FILE
    path.write_text(render_model_card(info or ModelCardInfo(), str(folder), adapter=adapter, chat=chat))
    return path


def _training_lines(info: ModelCardInfo) -> list[str]:
    facts = {
        "Data": info.dataset,
        "Rewards": ", ".join(info.reward_funcs) or None,
        "Optimizer steps": info.steps,
    }
    lines = [f"- {label}: {value}" for label, value in facts.items() if value is not None]
    if not lines and not info.settings:
        lines = ["- Not recorded."]
    return [*lines, "", *_table("Settings", {k: _value(v) for k, v in info.settings.items()})]


def _table(title: str, rows: Mapping[str, str]) -> list[str]:
    if not rows:
        return []
    return [
        f"### {title}",
        "",
        "| name | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows.items()),
        "",
    ]


def _number(value: float) -> str:
    return f"{float(value):.4g}"


def _value(value: Any) -> str:
    # Keep a table row on one line whatever the value holds.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _loading_snippet(where: str, example: str | None, *, adapter: bool, chat: bool) -> list[str]:
    prompt = example if example is not None else (DEFAULT_QUESTION if chat else DEFAULT_EXAMPLE_PROMPT)
    if adapter:
        return [
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f"model = AutoPeftModelForCausalLM.from_pretrained({where!r})",
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})",
            f"inputs = tokenizer({prompt!r}, return_tensors='pt')",
            "output = model.generate(**inputs, max_new_tokens=256, do_sample=False)",
            "print(tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
            "```",
        ]
    query = f"[{{'role': 'user', 'content': {prompt!r}}}]" if chat else repr(prompt)
    return [
        "```python",
        "from transformers import pipeline",
        "",
        f"generator = pipeline('text-generation', model={where!r})",
        f"output = generator({query}, max_new_tokens=256, do_sample=False, return_full_text=False)",
        "print(output[0]['generated_text'])",
        "```",
    ]
