"""Tiny models and a character tokenizer built in code: no download needed.

Used by the tests, the benchmarks and the recipe that trains the shipped quickstart model.
Every printable ASCII character plus newline is one token, so any math text round-trips.
"""

from __future__ import annotations

import string
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
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
    """A character-level fast tokenizer: ids 0..2 are pad, eos, unk; then one id per character.

    Stored in the byte-level BPE format (no merges, so every character stays one token) that
    transformers' own tokenizers rebuild from a ``tokenizer.json``: saved beside a Qwen2 config,
    ``AutoTokenizer`` loads it as ``Qwen2Tokenizer`` and must still give these ids. Characters outside
    the alphabet are dropped, as byte-level tokenizers do with bytes missing from their vocabulary.
    """
    # The byte-level form of each character: itself for visible ASCII, e.g. "Ġ" for a space, "Ċ" for "\n".
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab.setdefault(byte_level.pre_tokenize_str(ch)[0][0], len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="left",
    )


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
    if arch == "gpt2":  # its config maps the common size names onto n_embd, n_layer, n_head, n_positions
        own = {"n_inner": intermediate_size}
    elif arch in ("qwen2", "llama"):
        own = {"num_key_value_heads": num_kv_heads, "intermediate_size": intermediate_size}
    else:
        raise ValueError(f"arch={arch!r} is not one of 'qwen2', 'llama', 'gpt2'.")
    # The names every architecture's config understands (gpt2 maps them onto its own).
    common = {
        "vocab_size": vocab,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "max_position_embeddings": max_position_embeddings,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": tie_word_embeddings,
    }
    config = AutoConfig.for_model(arch, **common, **own)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
