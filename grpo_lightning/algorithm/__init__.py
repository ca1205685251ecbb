"""The pure math of GRPO: group-relative advantages, the clipped loss and its aggregations, and the
plan of an update (mini-batches, micro-batches, loss normalisers). Tensors in, tensors out; no Lightning.

``loss_type`` and ``scale_rewards`` name registered classes (:mod:`.aggregations`,
:mod:`.advantages`; :mod:`.registry`) that declare the properties the update relies on.
"""
