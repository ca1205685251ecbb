"""The policy and its reference in a GRPOModule: built once, and how checkpoints hold the reference.

With ``beta > 0`` the reference is a frozen copy of the starting weights, made before any update;
a LoRA policy has none (its reference is the base model with the adapter off). A checkpoint leaves
the frozen copy out, since it is rebuilt from ``model``, unless reference sync changes it or it is
sharded (an FSDP2 checkpoint is loaded straight into the module's own state dict); loading puts the
rebuilt copy back before Lightning loads the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from grpo_lightning.models import (
    apply_lora,
    create_reference,
    disable_dropout,
    enable_gradient_checkpointing,
    is_sharded,
    load_policy,
    shard_fsdp2,
)

#: The state-dict prefix of the reference's weights (the module's ``ref_model`` attribute).
REF_PREFIX = "ref_model."


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


def drop_frozen_reference(state: Any, ref_model: nn.Module | None, synced: bool) -> None:
    """Remove the reference's weights from a checkpoint's ``state`` (its ``state_dict``) in place,
    when they are the frozen starting weights (``synced``: reference sync changes them: kept) held
    in a plain state dict (single device, DDP; a sharded one is kept whole)."""
    if ref_model is None or synced or not isinstance(state, dict) or is_sharded(ref_model):
        return
    for key in [k for k in state if k.startswith(REF_PREFIX)]:
        del state[key]


def restore_reference(state: Any, own: Mapping[str, Tensor], has_reference: bool) -> None:
    """Put the rebuilt reference's weights (from the module's ``own`` state dict) back into a
    checkpoint's ``state`` that left them out, then refuse a checkpoint of another configuration
    (weights missing or unexpected) with a message that says which settings to keep."""
    if not isinstance(state, dict):
        return
    if has_reference and not any(k.startswith(REF_PREFIX) for k in state):
        state.update({k: v for k, v in own.items() if k.startswith(REF_PREFIX)})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            "This checkpoint was written by a GRPOModule with another model configuration (model, lora, "
            f"beta or sync_ref_model differ): {len(missing)} weights missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). Resume with the settings it was saved with."
        )
