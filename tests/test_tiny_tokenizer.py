"""The built-in character tokenizer: a character outside its alphabet is one <|unk|> token, never dropped,
and the first text holding such characters is answered with a warning naming them."""

import pickle
import warnings

import pytest
from transformers import AutoTokenizer

from grpo_lightning.hf.tiny import CHARACTERS, SPECIAL_TOKENS, build_char_tokenizer

UNK = SPECIAL_TOKENS.index("<|unk|>")


def ids_by_hand(text: str) -> list[int]:
    """Special tokens take ids 0..2, then each character of the alphabet one id in order; any other
    character is the unknown token."""
    return [len(SPECIAL_TOKENS) + CHARACTERS.index(ch) if ch in CHARACTERS else UNK for ch in text]


@pytest.mark.parametrize(
    "text",
    [
        "café",  # an accent (two UTF-8 bytes): one token
        "2 😀 = 2",  # an emoji (four bytes)
        "答案是 5",  # CJK
        "a\tb",  # a tab is outside the alphabet too
        "naïve\u00a0résumé",  # several, with a no-break space
    ],
)
def test_unknown_characters_are_one_unknown_token_each(text):
    tokenizer = build_char_tokenizer()
    with pytest.warns(UserWarning, match="no token for"):
        ids = tokenizer(text)["input_ids"]
    assert ids == ids_by_hand(text)  # positions kept: nothing dropped
    assert len(ids) == len(text)


def test_the_warning_names_the_characters_once_per_tokenizer():
    tokenizer = build_char_tokenizer()
    with pytest.warns(UserWarning) as caught:
        tokenizer(["ok", "café 😀"])  # a batch
        tokenizer("naïve")  # no second warning
    messages = [str(w.message) for w in caught if "no token for" in str(w.message)]
    assert len(messages) == 1
    assert (
        "'é' (U+00E9)" in messages[0] and "'😀' (U+1F600)" in messages[0] and "<|unk|> (id 2)" in messages[0]
    )
    assert "ï" not in messages[0]  # only what the first text held
    with pytest.warns(UserWarning, match=r"'\\t' \(U\+0009\)"):
        build_char_tokenizer().tokenize("a\tb")


def test_known_text_is_unchanged_and_silent():
    tokenizer = build_char_tokenizer()
    text = "Q: What is 4 + 4?\nA: 4+4=8 #### 8 ~{}[]|\\`"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tokenizer(text)["input_ids"]
    assert ids == ids_by_hand(text)
    assert tokenizer.decode(ids) == text


def test_saved_it_loads_with_plain_transformers_and_keeps_the_unknown_token(tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")
    assert loaded("café 😀")["input_ids"] == ids_by_hand("café 😀")
    copy = pickle.loads(pickle.dumps(tokenizer))  # tokenizers travel to DataLoader workers
    with pytest.warns(UserWarning, match="no token for"):
        assert copy("é")["input_ids"] == [UNK]
