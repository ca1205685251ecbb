"""Hugging Face I/O: loading models and tokenizers (Hub ids, local folders, GGUF, the built-in model),
building the policy and its reference, model cards and exports in ``from_pretrained`` format.
"""
