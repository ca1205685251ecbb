"""Incremental forward passes for sampling: prefill once per unique prompt, then one token per step.

Both decoders share one interface: :meth:`prefill` runs the ``P`` unique prompts and repeats their
keys/values ``G`` times (the ``G`` samples of a prompt share it, so the prompt is computed once, not
``G`` times as ``generate`` over repeated rows does), :meth:`step` feeds one token per row.

- :class:`LeanDecoder` (Llama-family models: Llama, Qwen2, Qwen3, Mistral) calls the model's own
  submodules (norms, projections, MLP: adapters such as LoRA keep working) around preallocated
  key/value buffers, skipping the per-step mask building and cache bookkeeping of the generic forward.
  On a small model those dominate a decoding step.
- :class:`CacheDecoder` calls the model's forward with a ``DynamicCache``: any causal LM.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import DynamicCache

from grpo_lightning.hf.causal_lm import base_model, cache_argument, is_sharded, position_ids_from_mask

_LEAN_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
_SDPA_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)


def lean_unsupported_reason(model: nn.Module, total_length: int) -> str | None:
    """Why :class:`LeanDecoder` cannot run ``model`` for ``total_length`` positions (None: it can)."""
    lm = base_model(model)
    config = getattr(lm, "config", None)
    if getattr(config, "model_type", None) not in _LEAN_MODEL_TYPES:
        return f"model_type {getattr(config, 'model_type', None)!r} is not one of {sorted(_LEAN_MODEL_TYPES)}"
    inner = getattr(lm, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "the model does not have the Llama layout (model.embed_tokens/layers/norm/rotary_emb)"
    if is_sharded(lm):
        return "the parameters are sharded (FSDP): the model's own forward gathers them"
    for layer in inner.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(
            hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")
        ):
            return "a decoder layer lacks the q/k/v/o projections"
        window = getattr(attn, "sliding_window", None)
        if window is not None and window < total_length:
            return f"sliding-window attention ({window} < {total_length} positions)"
    return None


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """``allowed`` (bool) as the additive attention mask SDPA would build from it in every layer: 0 where
    allowed, -inf elsewhere, in ``dtype``. Built once per step and shared by the layers (same values)."""
    return torch.full(allowed.shape, float("-inf"), dtype=dtype, device=allowed.device).masked_fill_(
        allowed, 0.0
    )


def signed_sin(sin: Tensor) -> Tensor:
    """``sin: [..., d]`` with its first half negated: what :func:`_rope` multiplies the swapped halves by."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``x: [B, heads, S, d]`` with ``cos, sin: [B, 1, S, d]``, ``sin`` from :func:`signed_sin`.

    Llama's rotate-half form ``x * cos + cat(-x2, x1) * sin`` with the sign moved into the table
    (``-x2 * s1 == x2 * -s1`` exactly): the halves are swapped by one ``roll``, per step.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class LeanDecoder:
    """Decoding loop for Llama-family models with key/value buffers allocated once per rollout.

    Buffers are ``[N, kv_heads, L + max_new_tokens, head_dim]`` per layer; step t writes column L + t
    and attends to columns ``< L + t + 1`` minus the prompt's left padding.
    """

    compactable = True  # keep() drops rows

    def __init__(self, model: nn.Module) -> None:
        self.lm = base_model(model)
        self.inner = self.lm.model
        self.head = self.lm.get_output_embeddings()
        config = self.lm.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads

    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int, max_new_tokens: int) -> Tensor:
        """Run the ``[P, L]`` prompts, keep their keys/values ``repeats`` times; next-token logits ``[P * repeats, V]``."""
        p, width = prompt_ids.shape
        n = p * repeats
        self.width = width
        self.column = width  # next column to write
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        valid = prompt_mask.bool()
        # [P, 1, L, L]: causal and not padding; each position also sees itself so padding rows stay finite.
        causal = torch.ones(width, width, dtype=torch.bool, device=valid.device).tril()
        eye = torch.eye(width, dtype=torch.bool, device=valid.device)
        mask = ((causal & valid[:, None, :]) | eye)[:, None]
        positions = position_ids_from_mask(prompt_mask)
        x = self.inner.embed_tokens(prompt_ids)
        cos, sin = self.inner.rotary_emb(x, positions)
        sin = signed_sin(sin)
        mask = additive_mask(mask, x.dtype)
        total = width + max_new_tokens
        for i, layer in enumerate(self.inner.layers):
            x, k, v = self._layer(layer, x, cos[:, None], sin[:, None], None, mask)
            kbuf, vbuf = self._new_buffers(i, (n, self.num_kv_heads, total, self.head_dim), k)
            kbuf[:, :, :width] = k.repeat_interleave(repeats, dim=0)
            vbuf[:, :, :width] = v.repeat_interleave(repeats, dim=0)
            self.keys.append(kbuf)
            self.values.append(vbuf)
        # Decoding state, all rows: key validity per column and the rotary tables of every new position.
        self.key_valid = torch.ones(n, total, dtype=torch.bool, device=valid.device)
        self.key_valid[:, :width] = valid.repeat_interleave(repeats, dim=0)
        start = prompt_mask.long().sum(-1, keepdim=True).repeat_interleave(repeats, dim=0)
        new_positions = start + torch.arange(max_new_tokens, device=start.device)
        self.cos, sin = self.inner.rotary_emb(x, new_positions)  # [N, max_new_tokens, d]
        self.sin = signed_sin(sin)
        return self._logits(x[:, -1]).repeat_interleave(repeats, dim=0)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens: [N]`` (one per row) and return the next-token logits ``[N, V]``."""
        t = self.column - self.width
        x = self.inner.embed_tokens(tokens[:, None])
        cos, sin = self.cos[:, None, t : t + 1], self.sin[:, None, t : t + 1]
        mask = additive_mask(self.key_valid[:, None, None, : self.column + 1], x.dtype)
        for i, layer in enumerate(self.inner.layers):
            x, _, _ = self._layer(layer, x, cos, sin, i, mask)
        self.column += 1
        return self._logits(x[:, -1])

    def _layer(
        self, layer: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, index: int | None, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder layer on ``x: [B, S, H]``; ``index`` None = prefill (returns the new keys/values).
        ``mask``: additive, broadcastable to ``[B, heads, S, keys]``."""
        attn = layer.self_attn
        b, s, _ = x.shape
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, s, self.num_heads, self.head_dim)
        k = attn.k_proj(h).view(b, s, self.num_kv_heads, self.head_dim)
        v = attn.v_proj(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        # Queries and keys rotated together: one set of elementwise ops instead of two (same values).
        qk = _rope(torch.cat((q, k), dim=2).transpose(1, 2), cos, sin)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        keys, values = (k, v) if index is None else self._cache(index, k, v)
        if _SDPA_GQA:
            o = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=True
            )
        else:
            groups = self.num_heads // self.num_kv_heads
            o = F.scaled_dot_product_attention(
                q, keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1), attn_mask=mask,
                scale=attn.scaling,
            )  # fmt: skip
        x = x + attn.o_proj(o.transpose(1, 2).reshape(b, s, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x, k, v

    def keep(self, rows: Tensor) -> None:
        """Go on decoding only the rows ``rows: [n']`` (ascending positions among the current rows)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.key_valid = self.key_valid.index_select(0, rows)
        self.cos, self.sin = self.cos.index_select(0, rows), self.sin.index_select(0, rows)

    def _new_buffers(
        self, index: int, shape: tuple[int, int, int, int], like: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Key and value buffers ``shape = [N, kv_heads, L + max_new_tokens, head_dim]`` of layer ``index``."""
        return like.new_empty(shape), like.new_empty(shape)

    def _cache(self, index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's ``k, v: [N, kv_heads, 1, d]`` into layer ``index``'s buffers; the keys/values to attend."""
        self.keys[index][:, :, self.column : self.column + 1] = k
        self.values[index][:, :, self.column : self.column + 1] = v
        return self.keys[index][:, :, : self.column + 1], self.values[index][:, :, : self.column + 1]

    def _logits(self, last: Tensor) -> Tensor:
        """``last: [B, H]`` final-layer states -> ``[B, V]`` logits (the LM head on these rows only)."""
        return self.head(self.inner.norm(last))


class CacheDecoder:
    """Decoding loop through the model's own forward and a ``DynamicCache``: works for any causal LM."""

    compactable = True  # keep() drops rows

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cache_arg = cache_argument(model) or "past_key_values"
        # Only when the forward names it: a PEFT wrapper would pass it on through **kwargs too, but the
        # last position's logits computed alone can round differently from the full ones.
        named = inspect.signature(model.forward).parameters
        self.keep_arg = {"logits_to_keep": 1} if "logits_to_keep" in named else {}

    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int, max_new_tokens: int) -> Tensor:
        """Run the ``[P, L]`` prompts, repeat the cache ``repeats`` times; next-token logits ``[P * repeats, V]``."""
        self.cache = DynamicCache()
        positions = position_ids_from_mask(prompt_mask)
        out = self._forward(prompt_ids, prompt_mask, positions)
        self.cache.batch_repeat_interleave(repeats)
        self.mask = prompt_mask.repeat_interleave(repeats, dim=0)
        self.next_position = prompt_mask.long().sum(-1, keepdim=True).repeat_interleave(repeats, dim=0)
        return out.logits[:, -1].repeat_interleave(repeats, dim=0)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens: [N]`` and return the next-token logits ``[N, V]``."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self._forward(tokens[:, None], self.mask, self.next_position)
        self.next_position = self.next_position + 1
        return out.logits[:, -1]

    def keep(self, rows: Tensor) -> None:
        """Go on decoding only the rows ``rows: [n']`` (ascending positions among the current rows)."""
        self.cache.batch_select_indices(rows)
        self.mask = self.mask.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Any:
        kwargs = {self.cache_arg: self.cache, **self.keep_arg}
        return self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
        )
