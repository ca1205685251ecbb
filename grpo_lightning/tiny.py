"""Tiny models and a character tokenizer built in code: no download needed.

Used by the tests, the benchmarks and the recipe that trains the shipped quickstart model.
Every printable ASCII character plus newline is one token, so any math text round-trips.
"""

from __future__ import annotations

import string
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
CHARACTERS = "\n" + "".join(c for c in string.printable if c.isprintable())

Architecture = Literal["qwen2", "llama", "gpt2"]


def build_char_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: ids 0..2 are pad, eos, unk; then one id per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every character is its own pre-token; [\s\S] also matches newlines.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join characters without spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="left",
    )
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    arch: Architecture = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
    tie_word_embeddings: bool = True,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised causal LM of the given architecture, sized for CPU tests.

    The generation config carries the tokenizer's pad and eos ids, as a real checkpoint would.
    """
    tokenizer = tokenizer if tokenizer is not None else build_char_tokenizer()
    vocab = vocab_size if vocab_size is not None else len(tokenizer)
    common = {
        "vocab_size": vocab,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": tie_word_embeddings,
    }
    if arch == "gpt2":
        config = AutoConfig.for_model(
            "gpt2",
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            n_positions=max_position_embeddings,
            **common,
        )
    elif arch in ("qwen2", "llama"):
        config = AutoConfig.for_model(
            arch,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            **common,
        )
    else:
        raise ValueError(f"arch={arch!r} is not one of 'qwen2', 'llama', 'gpt2'.")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
