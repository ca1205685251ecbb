"""Per-token log-probs and entropies, in float32, without a ``[B, T, V]`` tensor of the whole batch.

- :func:`token_logprobs`: from logits, or from final hidden states with the LM head applied chunk by
  chunk (:mod:`~grpo_lightning.logprobs.chunked`);
- :func:`linear_logprobs`: a plain ``nn.Linear`` head and the log-probs as one autograd function
  (:mod:`~grpo_lightning.logprobs.fused_head`);
- :func:`sequence_logprobs`: a causal LM's log-probs of each row's completion tokens, and
  :func:`shared_prefix_logprobs`, the same computing each distinct prompt once
  (:mod:`~grpo_lightning.logprobs.sequence`).
"""

from grpo_lightning.hf.causal_lm import position_ids_from_mask
from grpo_lightning.logprobs.chunked import DEFAULT_CHUNK_SIZE, token_logprobs, token_logprobs_from_hidden
from grpo_lightning.logprobs.fused_head import fused_head_applies, linear_logprobs
from grpo_lightning.logprobs.sequence import sequence_logprobs, shared_prefix_logprobs

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "fused_head_applies",
    "linear_logprobs",
    "position_ids_from_mask",
    "sequence_logprobs",
    "shared_prefix_logprobs",
    "token_logprobs",
    "token_logprobs_from_hidden",
]
