"""Tiny models and a character tokenizer built in code: no download needed.

Used by the tests, the benchmarks and the recipe that trains the shipped quickstart model.
Every printable ASCII character plus newline is one token, so any math text round-trips; any other
character (a tab, an accent, an emoji, CJK) is one ``<|unk|>`` token, with a warning naming it.
"""

from __future__ import annotations

import json
import string
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
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
_ALPHABET = frozenset(CHARACTERS)
# Every character outside the alphabet becomes NUL, a single byte without a token, so that the
# model's unknown token stands for it: one <|unk|> per character, whatever its UTF-8 length.
_UNKNOWN_RE = Regex(r"[^\n -~]")
#: Characters named in the warning about characters outside the alphabet.
NAMED_UNKNOWN = 10

Architecture = Literal["qwen2", "llama", "gpt2"]


class CharTokenizer(PreTrainedTokenizerFast):
    """The character tokenizer: a ``PreTrainedTokenizerFast`` that warns, once, naming them, when it
    encodes characters outside its alphabet (each becomes ``<|unk|>``).

    It saves as a plain ``PreTrainedTokenizerFast`` (the folder loads with transformers alone, the
    ``<|unk|>`` mapping included); the warning belongs to the object built in code.
    """

    _warned_unknown = False

    def _warn_unknown(self, *texts: Any) -> None:
        if self._warned_unknown:
            return
        unknown = sorted(_characters(texts) - _ALPHABET)
        if not unknown:
            return
        self._warned_unknown = True
        named = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in unknown[:NAMED_UNKNOWN])
        more = f" and {len(unknown) - NAMED_UNKNOWN} more" if len(unknown) > NAMED_UNKNOWN else ""
        warnings.warn(
            f"The character tokenizer has no token for {named}{more}: each is encoded as {UNK_TOKEN} "
            f"(id {self.unk_token_id}). It knows newline and the printable ASCII characters only; replace "
            "these characters in the data, or use a model with a real tokenizer. This warning is given once "
            "per tokenizer.",
            UserWarning,
            stacklevel=4,
        )

    def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any) -> Any:
        self._warn_unknown(text, text_pair)
        return super()._encode_plus(text, text_pair, *args, **kwargs)

    def _batch_encode_plus(self, batch_text_or_text_pairs: Any, *args: Any, **kwargs: Any) -> Any:
        # transformers 4 encodes batches here; transformers 5 has no such method and never calls it.
        self._warn_unknown(batch_text_or_text_pairs)
        return super()._batch_encode_plus(batch_text_or_text_pairs, *args, **kwargs)  # type: ignore[misc]

    def tokenize(self, text: str, *args: Any, **kwargs: Any) -> list[str]:
        self._warn_unknown(text)
        return super().tokenize(text, *args, **kwargs)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Saved as ``PreTrainedTokenizerFast``: a class name transformers 4 and 5 both load."""
        files = super().save_pretrained(save_directory, *args, **kwargs)
        config_file = Path(save_directory) / "tokenizer_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return files


def _characters(texts: Any) -> set[str]:
    """The characters of a text, or of the texts in (nested) lists and tuples of them."""
    if isinstance(texts, str):
        return set(texts)
    if isinstance(texts, (list, tuple)):
        return set().union(*(_characters(t) for t in texts))
    return set()


def build_char_tokenizer(model_max_length: int = 512) -> CharTokenizer:
    """A character-level fast tokenizer: ids 0..2 are pad, eos, unk; then one id per character.

    Stored in the byte-level BPE format (no merges, so every character stays one token) that
    transformers' own tokenizers rebuild from a ``tokenizer.json``: saved beside a Qwen2 config,
    ``AutoTokenizer`` loads it as ``Qwen2Tokenizer`` and must still give these ids. A character
    outside the alphabet is one ``<|unk|>`` token (not dropped), and the first text holding such
    characters is answered with a warning naming them.
    """
    # The byte-level form of each character: itself for visible ASCII, e.g. "Ġ" for a space, "Ċ" for "\n".
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab.setdefault(byte_level.pre_tokenize_str(ch)[0][0], len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Replace(_UNKNOWN_RE, "\x00")
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    return CharTokenizer(
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
