"""The policy and its reference in a GRPOModule: built once, and what checkpoints hold of them.

With ``beta > 0`` the reference is a frozen copy of the starting weights, made before any update;
a LoRA policy has none (its reference is the base model with the adapter off). Weights that training
never changes are rebuilt from ``model`` when a checkpoint is loaded, so a checkpoint leaves them
out: the frozen reference (unless reference sync changes it) and the policy's frozen parameters (a
LoRA policy's whole base model: its checkpoint holds the adapter and the optimizer state). Sharded
models are kept whole (an FSDP2 checkpoint is loaded straight into the module's own state dict).
The checkpoint records which weights it left out with a fingerprint of each; loading puts the
rebuilt weights back before Lightning loads the state, and refuses them if they are not the ones
the run was trained from (the model at that path changed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from grpo_lightning.hf.models import (
    apply_lora,
    create_reference,
    disable_dropout,
    enable_gradient_checkpointing,
    is_sharded,
    load_policy,
    shard_fsdp2,
)

#: The state-dict prefixes of the reference's and the policy's weights (the module's attributes).
REF_PREFIX = "ref_model."
POLICY_PREFIX = "policy."
#: The checkpoint entry ``{state-dict key: fingerprint}`` of the weights left out of its state dict.
REBUILT_KEY = "grpo_rebuilt_weights"


def build_models(
    policy: nn.Module | None,
    model_spec: str | None,
    *,
    model_kwargs: dict[str, Any] | None,
    no_dropout: bool,
    gradient_checkpointing: bool,
    with_reference: bool,
    lora: Any,
    device_mesh: Any,
) -> tuple[nn.Module, nn.Module | None]:
    """The policy to train (``policy``, or loaded from ``model_spec``) and its frozen reference.

    ``with_reference``: beta > 0. ``lora``: a LoRA config to apply, or None. ``device_mesh``: the
    ModelParallelStrategy's mesh (both models sharded with FSDP2 per decoder layer), or None.
    """
    policy = policy if policy is not None else load_policy(model_spec, model_kwargs)
    # from_pretrained returns eval mode; HF skips gradient checkpointing outside train mode.
    policy.train()
    if no_dropout:
        disable_dropout(policy)
    if gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    ref = create_reference(policy) if with_reference and lora is None else None
    if lora is not None:
        policy = apply_lora(policy, lora)
    if device_mesh is not None:
        names = device_mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                "GRPOModule shards with FSDP2 only: set ModelParallelStrategy(tensor_parallel_size=1)."
            )
        shard_fsdp2(policy, device_mesh)
        if ref is not None:
            shard_fsdp2(ref, device_mesh)
    return policy, ref


def rebuilt_keys(policy: nn.Module | None, ref_model: nn.Module | None, synced: bool) -> list[str]:
    """The module state-dict keys of the weights training never changes, which ``model`` rebuilds:
    the reference's unless reference sync moves it (``synced``), and the policy's frozen parameters.
    None from a sharded model."""
    keys: list[str] = []
    if ref_model is not None and not synced and not is_sharded(ref_model):
        keys += [REF_PREFIX + k for k in ref_model.state_dict()]
    if policy is not None and not is_sharded(policy):
        keys += [
            POLICY_PREFIX + k
            for k, v in policy.state_dict(keep_vars=True).items()
            if isinstance(v, nn.Parameter) and not v.requires_grad
        ]
    return keys


def fingerprint(weight: Tensor) -> list[float]:
    """Two numbers that tell a weight ``[any shape]`` from another: its sum and its sum of magnitudes."""
    values = weight.detach().double()
    return [float(values.sum()), float(values.abs().sum())]


def drop_rebuilt_weights(checkpoint: dict[str, Any], keys: list[str]) -> None:
    """Remove ``keys`` (:func:`rebuilt_keys`) from ``checkpoint["state_dict"]`` in place and record
    them, fingerprinted, under :data:`REBUILT_KEY`."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return
    record = {key: fingerprint(state.pop(key)) for key in keys if key in state}
    if record:
        checkpoint[REBUILT_KEY] = record


def restore_rebuilt_weights(
    checkpoint: dict[str, Any], own: Mapping[str, Tensor], has_reference: bool, model: Any
) -> None:
    """Put the rebuilt weights (from the module's ``own`` state dict) back into ``checkpoint["state_dict"]``
    where it left them out, after checking their fingerprints; then refuse a checkpoint of another
    configuration (weights missing or unexpected) with a message that says which settings to keep.

    ``has_reference``: the module has a reference (beta > 0); checkpoints written before the record
    existed left the whole reference out. ``model``: what the weights were rebuilt from, for messages.
    """
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return
    record: dict[str, list[float]] = checkpoint.get(REBUILT_KEY) or {}
    if not record and has_reference and not any(k.startswith(REF_PREFIX) for k in state):
        record = {k: [] for k in own if k.startswith(REF_PREFIX)}
    changed = [
        key
        for key, saved in record.items()
        if key in own and saved and not _same(fingerprint(own[key]), saved)
    ]
    if changed:
        raise ValueError(
            f"The checkpoint was trained from other weights than the model {_named(model)} gives now: {len(changed)} "
            f"weights it left out to be rebuilt from the model differ (e.g. {changed[:3]}). The files at that "
            "path changed since, or another model was given: resume with the model the run started from."
        )
    state.update({k: own[k] for k in record if k in own and k not in state})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            "This checkpoint was written by a GRPOModule with another model configuration (model, lora, "
            f"beta or sync_ref_model differ): {len(missing)} weights missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). Resume with the settings it was saved with."
        )


def _named(model: Any) -> str:
    return repr(model) if isinstance(model, str) else "passed to the module"


def _same(a: list[float], b: list[float]) -> bool:
    # Sums in float64 of the same float32 values: equal up to the order of the additions.
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) for x, y in zip(a, b, strict=True))
