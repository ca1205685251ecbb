"""Saving and loading tokenizers so that plain ``AutoTokenizer`` gives the ids used in training.

transformers picks the tokenizer class from the model type in ``config.json`` for some models
(Qwen2 among them, in transformers 5) and rebuilds the tokenizer in that class's format from the
saved vocabulary: a tokenizer saved in another format then encodes text differently, silently.
Every folder this package writes is checked for that after saving.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

#: transformers 5 saves a tokenizer.json-backed tokenizer as "TokenizersBackend", a class transformers 4
#: lacks; both versions know it as "PreTrainedTokenizerFast".
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
#: Text every saved tokenizer must encode the same way after a plain ``AutoTokenizer`` load.
ROUND_TRIP_TEXT = "Q: What is 4 + 4 + 2 + 2?\nA: 4+4=8, 8+2=10, 10+2=12 #### 12"


def encodes_alike(
    a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, text: str = ROUND_TRIP_TEXT
) -> bool:
    """True when both tokenizers give the same ids for ``text`` (no special tokens added)."""
    return a(text, add_special_tokens=False)["input_ids"] == b(text, add_special_tokens=False)["input_ids"]


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, path: str | Path) -> bool:
    """``tokenizer.save_pretrained(path)``, readable by transformers 4 and 5, then checked.

    Save the model first: ``AutoTokenizer`` reads ``config.json`` to pick the tokenizer class, and
    the check loads the folder as users will. Returns :func:`check_auto_tokenizer`'s verdict (a
    tokenizer that comes back different is reported with a warning; the files are kept).
    """
    path = Path(path)
    tokenizer.save_pretrained(path)
    config_file = path / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        declared = config.get("tokenizer_class")
        if declared in PORTABLE_TOKENIZER_CLASSES:
            config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASSES[declared]
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return check_auto_tokenizer(tokenizer, path)


def check_auto_tokenizer(
    tokenizer: PreTrainedTokenizerBase, path: str | Path, text: str = ROUND_TRIP_TEXT
) -> bool:
    """True when ``AutoTokenizer.from_pretrained(path)`` encodes ``text`` as ``tokenizer`` does; else warn."""
    try:
        loaded = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers raises many types for a folder it cannot read
        warnings.warn(
            f"AutoTokenizer.from_pretrained({str(path)!r}) fails ({type(err).__name__}: {err}): the tokenizer "
            "saved there cannot be loaded the standard way.",
            stacklevel=2,
        )
        return False
    if encodes_alike(loaded, tokenizer, text):
        return True
    got = len(loaded(text, add_special_tokens=False)["input_ids"])
    expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    warnings.warn(
        f"AutoTokenizer.from_pretrained({str(path)!r}) loads a {type(loaded).__name__} that encodes {text!r} "
        f"differently from the tokenizer used in training ({got} ids against {expected}): whoever loads this "
        "folder the standard way (AutoTokenizer, pipeline) gets different ids and wrong answers. transformers "
        "picks the tokenizer class from the model type in config.json for some models: save the tokenizer in "
        "that model type's own format, or load it with PreTrainedTokenizerFast.from_pretrained.",
        stacklevel=2,
    )
    return False


def tokenizer_from_pretrained(path: str, kwargs: Mapping[str, Any] | None = None) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(path, **kwargs)``, guarded against a local folder it misreads.

    ``kwargs`` say where the files are (``gguf_file``, ``revision``...); a tokenizer read from a GGUF
    file has no ``tokenizer_config.json`` to check against.

    A folder that declares a generic ``tokenizer.json`` tokenizer but comes back as a model type's own
    class is compared with the tokenizer as saved; when the ids differ (a folder written by an earlier
    version of this package, say) the tokenizer as saved is used, with a warning saying how to repair it.
    """
    kwargs = dict(kwargs or {})
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    config_file = Path(path, kwargs.get("subfolder") or "") / "tokenizer_config.json"
    if "gguf_file" in kwargs or not config_file.is_file():
        return tokenizer
    if type(tokenizer).__name__ in GENERIC_TOKENIZER_CLASSES:
        return tokenizer
    if json.loads(config_file.read_text()).get("tokenizer_class") not in GENERIC_TOKENIZER_CLASSES:
        return tokenizer
    as_saved = PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
    if encodes_alike(tokenizer, as_saved):
        return tokenizer
    warnings.warn(
        f"AutoTokenizer.from_pretrained({path!r}) gives a {type(tokenizer).__name__} that encodes text "
        "differently from the tokenizer.json saved there; using the tokenizer as saved. Users of this folder "
        "with plain transformers get wrong ids: re-save its tokenizer with "
        "grpo_lightning.hf.tokenizer_io.save_tokenizer (after the model's config.json).",
        stacklevel=2,
    )
    return as_saved


def chat_turn_end_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes right after an assistant message (``<|im_end|>``
    in ChatML), or None: no template, or plain text follows the message.

    A model trained on chat prompts ends its answer with this token, which need not be the
    tokenizer's EOS (a base model's template often ends turns with another token than its EOS).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    marker = "GRPO_LIGHTNING_ANSWER"
    messages = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses this conversation (roles it does not know) says nothing
        return None
    if not isinstance(text, str) or marker not in text:
        return None
    after = text.split(marker, 1)[1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    return int(ids[0]) if ids and ids[0] in tokenizer.all_special_ids else None
