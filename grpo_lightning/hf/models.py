"""Loading the policy and its tokenizer, LoRA wrapping, the frozen reference, export.

A model is named the way ``transformers`` names it (a Hub id or a local ``save_pretrained``
folder), as a local GGUF file (``path/to/x.gguf``, or a folder holding one; see
:mod:`grpo_lightning.hf.gguf`), by a built-in alias (``"builtin:tiny-math"``, shipped inside the
package; ``"builtin:smollm2-135m-instruct"``, from the ``[real]`` extra), or passed already built
(a ``PreTrainedModel``, e.g. from a notebook).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from grpo_lightning._lazy import instance_check_type
from grpo_lightning.hf.builtin import BUILTIN_PREFIX, builtin_alias, builtin_model_path, builtin_models
from grpo_lightning.hf.causal_lm import base_model, is_sharded
from grpo_lightning.hf.gguf import (
    GGUF_SUFFIX,
    dequantizing,
    drop_quantizer,
    split_gguf,
)
from grpo_lightning.hf.model_card import ModelCardInfo, write_model_card
from grpo_lightning.hf.tokenizer_io import chat_turn_end_id, save_tokenizer, tokenizer_from_pretrained

if TYPE_CHECKING:  # transformers' modeling code loads with the first model, not with this module
    from transformers import PreTrainedModel

BuiltModel = instance_check_type(
    "BuiltModel",
    __name__,
    "transformers.modeling_utils",
    ("PreTrainedModel",),
    doc="``isinstance(value, BuiltModel)``: ``value`` is a ``transformers.PreTrainedModel``. It stands for it "
    "in :data:`ModelSource`, so that --help does not import transformers' modeling code.",
)
if TYPE_CHECKING:
    ModelSource: TypeAlias = str | PreTrainedModel
else:  # what the command line is built from
    ModelSource = str | BuiltModel

#: ``from_pretrained`` arguments of the model that name where its files are: the tokenizer read from
#: the same place takes them too (a GGUF file holds both; a revision pins both).
SOURCE_KWARGS = ("gguf_file", "revision", "subfolder", "cache_dir", "token", "local_files_only")

#: ``LoraConfig`` defaults applied when a ``lora`` dict leaves them out.
LORA_DEFAULTS: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
}


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (``org/name``): absolute, relative with ``./``, ``~``, deeper, or a
    ``.gguf`` file (the Hub serves those only with ``gguf_file``)."""
    return (
        name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or name.endswith(GGUF_SUFFIX)
    )


def resolve_model_path(name: str) -> str:
    """Map ``"builtin:<name>"`` to the folder inside the package (or the GGUF file of a wheel alias);
    a missing local path is an error that says so; any other string (a Hub id) is returned as is."""
    if not name.startswith(BUILTIN_PREFIX):
        if _looks_local(name) and not Path(name).expanduser().exists():
            what = "GGUF file" if name.endswith(GGUF_SUFFIX) else "model folder"
            raise FileNotFoundError(
                f"No {what} at {name!r}. If it moved, give its new place (--model.model <path>; "
                "resuming from a checkpoint accepts a new path too), or a Hub id such as 'Qwen/Qwen2.5-0.5B'."
            )
        return str(Path(name).expanduser()) if name.startswith("~") else name
    return builtin_model_path(name)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grpo_lightning.hf.models builtin:tiny-math``: print the folder (or GGUF file) each
    named model loads from; with no name, list the built-in aliases."""
    names = list(sys.argv[1:] if argv is None else argv)
    if not names or names[0] in ("-h", "--help"):
        print(
            "usage: python -m grpo_lightning.hf.models NAME [NAME ...]\n"
            "Prints where each model loads from. Built-in models: " + ", ".join(builtin_models())
        )
        return 0
    try:
        for name in names:
            print(resolve_model_path(name))
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def pretrained_source(name: str, kwargs: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(path, kwargs)`` to pass to ``from_pretrained`` for the model or tokenizer named ``name``.

    Aliases resolve (:func:`resolve_model_path`) and a local GGUF file is named as transformers
    wants it: its folder, and ``gguf_file`` in ``kwargs`` (:func:`~grpo_lightning.hf.gguf.split_gguf`).
    """
    return split_gguf(resolve_model_path(name), kwargs or {})


def _dtype(value: Any) -> Any:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``"auto"``, dtypes and None pass through."""
    if isinstance(value, str) and value != "auto":
        dtype = getattr(torch, value, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"model_kwargs dtype={value!r} is not a torch dtype name (e.g. 'bfloat16').")
        return dtype
    return value


def load_policy(
    model: str | PreTrainedModel, model_kwargs: Mapping[str, Any] | None = None
) -> PreTrainedModel:
    """The causal LM to train: ``model`` itself when built, else ``AutoModelForCausalLM.from_pretrained``.

    ``model_kwargs`` go to ``from_pretrained`` (``dtype``, ``attn_implementation``, ``revision``,
    ``gguf_file``...); a dtype may be given by name. They cannot apply to a model that is already
    built. A GGUF file is dequantized and loses its quantizer: the result is a plain trainable model.
    """
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise ValueError(
                "model_kwargs only apply when the model is loaded by name; the model was passed already built. "
                "Drop model_kwargs or pass the model's Hub id / path instead."
            )
        return model  # type: ignore[return-value]
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a Hub id, a local path, 'builtin:<name>' or a PreTrainedModel; got {model!r}."
        )
    kwargs = dict(model_kwargs or {})
    for key in ("dtype", "torch_dtype"):
        if key in kwargs:
            kwargs[key] = _dtype(kwargs[key])
    from transformers import AutoModelForCausalLM

    with _naming_the_source(model, "model"):
        path, kwargs = pretrained_source(model, kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(path, **dequantizing(kwargs))
    drop_quantizer(loaded)
    return loaded


@contextmanager
def _naming_the_source(name: str, what: str) -> Iterator[None]:
    """Loading errors from the Hub client (offline, unknown repo, gated) name ``name`` and the way out.
    A local folder's own errors (a bad config) pass unchanged."""
    try:
        yield
    except (OSError, ValueError) as err:
        hub_id = not name.startswith(BUILTIN_PREFIX) and not _looks_local(name) and not Path(name).exists()
        if not hub_id:
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = (
            "HF_HUB_OFFLINE is set, so only files already in the Hugging Face cache can be used"
            if offline
            else "check the id and your network access"
        )
        raise OSError(
            f"Could not load the {what} {name!r} ({type(err).__name__}: {err}). It is neither a local folder nor "
            f"a Hub repository that could be read: {hint}. Download it beforehand (huggingface-cli download "
            f"{name}) or give a local path."
        ) from err


def load_tokenizer(
    tokenizer: str | PreTrainedTokenizerBase | None,
    model: str | PreTrainedModel,
    model_kwargs: Mapping[str, Any] | None = None,
) -> PreTrainedTokenizerBase:
    """The tokenizer given, else the model's; set up for generation (left padding, a pad token).

    A model passed already built has no tokenizer attached: its ``name_or_path`` is tried, and
    when that is empty the error asks for ``tokenizer=``. A tokenizer read from the model's own
    name takes the ``model_kwargs`` that say where the files are (:data:`SOURCE_KWARGS`: the GGUF
    file, the revision...).
    """
    same_source = tokenizer is None or (isinstance(model, str) and tokenizer == model)
    source_kwargs = {k: v for k, v in (model_kwargs or {}).items() if k in SOURCE_KWARGS} if same_source else {}
    if tokenizer is None:
        source = model if isinstance(model, str) else getattr(model, "name_or_path", "")
        if not source:
            raise ValueError(
                "The model was passed already built, so its tokenizer is unknown: pass tokenizer= (a tokenizer "
                "object, a Hub id or a local path)."
            )
        tokenizer = source
    if isinstance(tokenizer, str):
        with _naming_the_source(tokenizer, "tokenizer"):
            tokenizer = tokenizer_from_pretrained(*pretrained_source(tokenizer, source_kwargs))
    # Batched generation appends to the right end of each prompt: prompts must be left-padded.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "The tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token."
            )
        tokenizer.pad_token = tokenizer.eos_token  # usual for base models; masks keep pads out of the loss
    return tokenizer


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a completion: the generation config's EOS ids (an int or a list), the
    tokenizer's, and the token that ends an assistant turn in its chat template (``<|im_end|>``)."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id, chat_turn_end_id(tokenizer)):
        if value is None:
            continue
        for i in [value] if isinstance(value, int) else list(value):
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError(
            "Neither the model's generation config nor the tokenizer defines an EOS token: completions could "
            "never end. Set model.generation_config.eos_token_id."
        )
    return ids


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0: the ratio pi/pi_old must compare the same function."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward (non-reentrant, so frozen inputs are fine with LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # caches are only useful in generate, which asks for one itself


def apply_lora(model: PreTrainedModel, lora: Mapping[str, Any] | Any) -> nn.Module:
    """Wrap ``model`` with a LoRA adapter; ``lora`` is a ``peft.LoraConfig`` or a dict of its fields.

    Dict defaults: ``r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"``.
    """
    from peft import LoraConfig, PeftConfig, get_peft_model

    if isinstance(lora, PeftConfig):
        config = lora
    elif isinstance(lora, Mapping):
        fields = {**LORA_DEFAULTS, "task_type": "CAUSAL_LM", **lora}
        try:
            config = LoraConfig(**fields)
        except TypeError as err:
            raise ValueError(f"lora={dict(lora)!r} is not a valid peft LoraConfig: {err}") from err
    else:
        raise TypeError(
            f"lora must be a dict of LoraConfig fields or a peft LoraConfig, got {type(lora).__name__}."
        )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated checkpointing aliases; nothing the caller can change.
        warnings.filterwarnings(
            "ignore",
            message=r"`(is_)?gradient_checkpointing(_enable)?` is deprecated",
            category=FutureWarning,
        )
        return get_peft_model(model, config)


def is_peft_model(model: nn.Module) -> bool:
    """True for a PEFT-wrapped model (its reference is the base model with the adapter disabled)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def create_reference(policy: nn.Module) -> nn.Module:
    """A frozen in-memory copy of ``policy`` (no gradients), for the KL penalty.

    It keeps the policy's train/eval mode (Lightning warns about modules left in eval mode);
    :func:`reference_context` switches it to eval mode while it is used.
    """
    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    return ref


@contextmanager
def reference_context(policy: nn.Module, ref: nn.Module | None) -> Iterator[nn.Module]:
    """Yield the model that computes reference log-probs, in eval mode: ``ref``, or ``policy`` with its
    adapter off."""
    if ref is not None:
        with eval_mode(ref):
            yield ref
    elif is_peft_model(policy):
        with policy.disable_adapter(), eval_mode(policy):
            yield policy
    else:
        raise RuntimeError(
            "No reference model: it exists only when beta > 0 (or as the base of a LoRA policy)."
        )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch ``model`` to eval mode (HF ``generate`` drops the KV cache under checkpointing in train mode)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def mix_reference(ref: nn.Module, policy: nn.Module, alpha: float) -> None:
    """TR-DPO reference update: ``ref <- alpha * policy + (1 - alpha) * ref``, parameter by parameter."""
    ref_params = dict(ref.named_parameters())
    for name, p in policy.named_parameters():
        target = ref_params.get(name)
        if target is None:
            raise RuntimeError(f"The reference has no parameter {name!r}: it must be a copy of the policy.")
        target.lerp_(p.detach().to(target.dtype), alpha)


def save_pretrained(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    merge_lora: bool = False,
    card: ModelCardInfo | None = None,
) -> Path:
    """Write the policy, tokenizer and a model card (``README.md``) in ``save_pretrained`` format.

    Returns the folder. A LoRA policy is saved as its adapter, or with ``merge_lora=True`` as a plain
    model with the adapter merged into the weights (on a copy: the policy being trained stays as it
    is). A model sharded with FSDP2 is gathered first, so call this on every rank; only rank 0 writes.
    ``card`` is what the model card says about training (base model, settings, steps, metrics).
    """
    path = Path(path)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    writer = not distributed or torch.distributed.get_rank() == 0
    adapter = is_peft_model(policy) and not merge_lora
    if adapter:
        check_adapter_base(policy)
    if is_sharded(policy):
        if merge_lora:
            raise ValueError(
                "merge_lora=True is not supported for a sharded (FSDP) policy: save the adapter "
                "(merge_lora=False) and merge it after loading on one device."
            )
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # A collective: every rank takes part; the full tensors land on rank 0's CPU.
        state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if writer:
            path.mkdir(parents=True, exist_ok=True)
            with stopping_as_trained(policy, tokenizer), naming_the_base(policy):
                policy.save_pretrained(path, state_dict=state)
    elif writer:  # under DDP every rank holds the same weights
        path.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(policy).merge_and_unload() if is_peft_model(policy) and merge_lora else policy
        with stopping_as_trained(model, tokenizer), naming_the_base(model):
            model.save_pretrained(path)
    if writer:
        save_tokenizer(tokenizer, path)
        chat = getattr(tokenizer, "chat_template", None) is not None
        base = next(iter(adapter_bases(policy)), None) if adapter else None
        write_model_card(path, card, adapter=adapter, chat=chat, adapter_base=base)
    return path


def check_adapter_base(policy: nn.Module) -> None:
    """Refuse to export a LoRA adapter alone when its base model came from a GGUF file: the adapter
    names its base by ``name_or_path``, and peft loads that with plain ``from_pretrained``, which
    needs ``config.json`` and cannot read the GGUF file."""
    name = getattr(base_model(policy), "name_or_path", "") or ""
    try:
        gguf_base = bool(name) and "gguf_file" in split_gguf(name, {})[1]
    except ValueError:  # a folder of several GGUF files
        gguf_base = True
    if gguf_base:
        raise ValueError(
            f"The LoRA policy's base model was loaded from a GGUF file ({name}), which peft cannot load as the "
            "base of an exported adapter. Export the adapter merged into a full model: merge_lora=True "
            "(on the command line, --export.merge_lora true)."
        )


def adapter_bases(policy: nn.Module) -> list[str]:
    """The base model each adapter of a PEFT ``policy`` names in its ``adapter_config.json``: the
    name it was loaded by, a built-in model's folder given as its alias (:func:`builtin_alias`)."""
    configs = getattr(policy, "peft_config", None) or {}
    names = [getattr(c, "base_model_name_or_path", None) or "" for c in configs.values()]
    return [(builtin_alias(name) if name else None) or name for name in names]


@contextmanager
def naming_the_base(model: nn.Module) -> Iterator[None]:
    """While a PEFT ``model`` is saved, its adapters name their base as :func:`adapter_bases` says:
    ``builtin:tiny-math``, not a folder inside this installation that no other machine has. Restored
    after; a model without adapters is left alone."""
    configs = list((getattr(model, "peft_config", None) or {}).values())
    before = [c.base_model_name_or_path for c in configs]
    for config, name in zip(configs, adapter_bases(model), strict=True):
        config.base_model_name_or_path = name or config.base_model_name_or_path
    try:
        yield
    finally:
        for config, name in zip(configs, before, strict=True):
            config.base_model_name_or_path = name


@contextmanager
def stopping_as_trained(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """While it is saved, ``model``'s generation config ends completions at the ids training stopped at
    (:func:`eos_token_ids`: ``<|im_end|>`` for a ChatML model) and pads with the tokenizer's pad token,
    so that ``generate`` and ``pipeline`` on the export stop where the project did. Restored after."""
    config = getattr(base_model(model), "generation_config", None)
    if config is None:
        yield
        return
    before = (config.eos_token_id, config.pad_token_id)
    ids = eos_token_ids(base_model(model), tokenizer)
    config.eos_token_id = ids[0] if len(ids) == 1 else ids
    config.pad_token_id = tokenizer.pad_token_id
    try:
        yield
    finally:
        config.eos_token_id, config.pad_token_id = before


def push_to_hub(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    repo_id: str,
    *,
    merge_lora: bool = False,
    card: ModelCardInfo | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload model trained with grpo-lightning",
    folder: str | Path | None = None,
) -> str:
    """Export as :func:`save_pretrained` does (into ``folder``, or a temporary folder) and upload it
    to the Hub model repository ``repo_id`` (created when missing); returns the commit URL.

    The card's loading snippet names ``repo_id``. ``token`` defaults to the logged-in user's
    (``hf auth login`` or ``HF_TOKEN``). Call it on every rank under FSDP; only rank 0 uploads.
    """
    import tempfile

    import huggingface_hub

    card = ModelCardInfo(repo_id=repo_id) if card is None else dataclasses.replace(card, repo_id=repo_id)
    with tempfile.TemporaryDirectory() as scratch:
        target = save_pretrained(policy, tokenizer, folder or scratch, merge_lora=merge_lora, card=card)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_rank() != 0:
            return ""
        huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
        commit = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(target), commit_message=commit_message, token=token
        )
    return str(getattr(commit, "commit_url", commit))


def shard_fsdp2(model: nn.Module, mesh: Any) -> None:
    """Apply FSDP2 ``fully_shard`` to each decoder layer, then to the root (ModelParallelStrategy).

    Decoder layers are the modules whose class is listed in the HF model's ``_no_split_modules``.
    """
    from torch.distributed.fsdp import fully_shard

    base = base_model(model)
    layer_classes = set(getattr(base, "_no_split_modules", None) or [])
    if not layer_classes:
        raise ValueError(
            f"{type(base).__name__} does not list its decoder layer class (_no_split_modules): cannot shard it "
            "per layer. Use strategy='ddp' for this model."
        )
    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


if __name__ == "__main__":
    sys.exit(main())
