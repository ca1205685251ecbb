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

from grpo_lightning.hf.builtin import BUILTIN_PREFIX

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
        example_prompt: a prompt for the loading snippet: the text the model continues, or with a chat
            template the user's question (sent as a user message).
        example_messages: a conversation for the loading snippet, sent as it is (the chat template renders
            it once); takes the place of ``example_prompt``.
        raw_prompt: ``example_prompt`` is the very text the model was trained to continue: sent as text
            even when the tokenizer has a chat template (the run did not use it).
    """

    base_model: str | None = None
    repo_id: str | None = None
    dataset: str | None = None
    reward_funcs: Sequence[str] = ()
    steps: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    example_prompt: str | None = None
    example_messages: Sequence[Mapping[str, str]] | None = None
    raw_prompt: bool = False


def settings_summary(hparams: Mapping[str, Any], keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
    """The entries of ``hparams`` (e.g. ``GRPOModule.hparams``) named in ``keys``, in that order."""
    return {key: hparams[key] for key in keys if key in hparams}


def run_card_info(hparams: Mapping[str, Any], reward_names: Sequence[str], trainer: Any | None) -> ModelCardInfo:
    """A card's facts from a GRPOModule's ``hparams`` and reward names and, when a Trainer ran it,
    the optimizer steps, the last ``val/*`` and ``train/reward`` values, the data module's source
    and how the loading snippet sends its first validation prompt (the data module's ``card_example()``,
    :meth:`~grpo_lightning.data.datamodule.PromptDataModule.card_example`).

    The card lists the run's arguments as saved (``hparams``), not ``module.settings``: a reader
    copies them back into a config, so they are printed verbatim (``lora`` as given, ``None``s kept)."""
    data = getattr(trainer, "datamodule", None)
    metrics = trainer.callback_metrics if trainer is not None else {}
    model = hparams.get("model")
    example = getattr(data, "card_example", None)  # any data module may offer one
    prompt, messages = example() if callable(example) else (None, None)
    return ModelCardInfo(
        base_model=model if isinstance(model, str) else None,
        dataset=getattr(data, "where", None),
        reward_funcs=list(reward_names),
        steps=trainer.global_step if trainer is not None else None,
        settings=settings_summary(hparams),
        metrics={k: float(v) for k, v in metrics.items() if k.startswith("val/") or k == "train/reward"},
        example_prompt=prompt,
        example_messages=messages,
        raw_prompt=prompt is not None,
    )


def hub_model_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub model id; None for built-in aliases, existing local paths and None."""
    if not name or name.startswith(BUILTIN_PREFIX) or Path(name).expanduser().exists():
        return None
    return name if _HUB_ID.match(name) else None


def folder_name(folder: str | Path) -> str:
    """How a card names the folder it sits in: the folder's own name (``hf_model``), which is right
    wherever the folder is moved to, unlike the path it had from where training ran."""
    return Path(folder).resolve().name or str(Path(folder).resolve())


def render_model_card(
    info: ModelCardInfo,
    location: str,
    *,
    adapter: bool = False,
    chat: bool = False,
    adapter_base: str | None = None,
) -> str:
    """The card's text: YAML front matter and a Markdown body.

    ``location`` is the name of the card's own folder (:func:`folder_name`), which the loading snippet
    passes to ``from_pretrained`` when ``info.repo_id`` is unset; ``adapter`` = the folder holds a LoRA
    adapter (loaded with peft); ``adapter_base`` = the base model its config names (a ``builtin:`` alias
    is loaded through grpo-lightning, which peft cannot do); ``chat`` = the tokenizer has a chat
    template (the snippet sends messages).
    """
    from huggingface_hub import ModelCardData

    base_id = hub_model_id(info.base_model)
    builtin_base = adapter_base if adapter and adapter_base and adapter_base.startswith(BUILTIN_PREFIX) else None
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
        *_where_lines(info.repo_id, location, builtin_base),
        *_loading_snippet(
            info.repo_id or location,
            _messages(info, chat) or info.example_prompt,
            adapter=adapter,
            builtin_base=builtin_base,
        ),
    ]
    return "\n".join(lines) + "\n"


def write_model_card(
    folder: str | Path,
    info: ModelCardInfo | None = None,
    *,
    adapter: bool = False,
    chat: bool = False,
    adapter_base: str | None = None,
) -> Path:
    """Write ``README.md`` into ``folder`` (an empty ``ModelCardInfo`` when None); returns its path."""
    path = Path(folder) / CARD_FILE
    text = render_model_card(
        info or ModelCardInfo(), folder_name(folder), adapter=adapter, chat=chat, adapter_base=adapter_base
    )
    path.write_text(text)
    return path


def _where_lines(repo_id: str | None, location: str, builtin_base: str | None) -> list[str]:
    """The words before the snippet: where it loads from, and what an adapter's built-in base
    (``builtin_base``, a ``builtin:`` alias) needs."""
    if repo_id:
        lines = [f"From the Hub repository `{repo_id}`:"]
    else:
        lines = [
            f"From this folder (`{location}`, the one holding this README): run the code from the folder that "
            f"holds it, or replace {location!r} with its path."
        ]
    if builtin_base:
        lines += [
            "",
            f"The adapter's base model is `{builtin_base}`, a model shipped inside the grpo-lightning package "
            f"(`pip install grpo-lightning`; `python -m grpo_lightning.hf.models {builtin_base}` prints its folder). "
            "peft cannot resolve that name itself, so the base is loaded first:",
        ]
    return [*lines, ""]


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


def _messages(info: ModelCardInfo, chat: bool) -> list[dict[str, str]] | None:
    """The conversation the snippet sends when the tokenizer has a chat template (``chat``), else None."""
    if info.example_messages is not None:
        return [dict(m) for m in info.example_messages]
    if not chat or info.raw_prompt:
        return None
    question = info.example_prompt if info.example_prompt is not None else DEFAULT_QUESTION
    return [{"role": "user", "content": question}]


def _loading_snippet(
    where: str, example: str | list[dict[str, str]] | None, *, adapter: bool, builtin_base: str | None = None
) -> list[str]:
    """``example``: a conversation (sent through the chat template), a text, or None (the default text).
    ``builtin_base``: the ``builtin:`` alias of an adapter's base, loaded through grpo-lightning."""
    prompt = example if example is not None else DEFAULT_EXAMPLE_PROMPT
    if adapter:
        encode = (
            f"tokenizer.apply_chat_template({prompt!r}, add_generation_prompt=True, return_tensors='pt', "
            "return_dict=True)"
            if isinstance(prompt, list)
            else f"tokenizer({prompt!r}, return_tensors='pt')"
        )
        load = (
            [
                "from peft import PeftModel",
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                "",
                "from grpo_lightning.hf.models import resolve_model_path",
                "",
                f"base = AutoModelForCausalLM.from_pretrained(resolve_model_path({builtin_base!r}))",
                f"model = PeftModel.from_pretrained(base, {where!r})",
            ]
            if builtin_base
            else [
                "from peft import AutoPeftModelForCausalLM",
                "from transformers import AutoTokenizer",
                "",
                f"model = AutoPeftModelForCausalLM.from_pretrained({where!r})",
            ]
        )
        return [
            "```python",
            *load,
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})",
            f"inputs = {encode}",
            "output = model.generate(**inputs, max_new_tokens=256, do_sample=False)",
            "print(tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
            "```",
        ]
    return [
        "```python",
        "from transformers import pipeline",
        "",
        f"generator = pipeline('text-generation', model={where!r})",
        f"output = generator({prompt!r}, max_new_tokens=256, do_sample=False, return_full_text=False)",
        "print(output[0]['generated_text'])",
        "```",
    ]
