"""Data files that cannot be read as given: not UTF-8, another byte-order mark, not Parquet. Each gets
one error naming the file, where the fault is, and the fix; a UTF-8 byte-order mark is read."""

from __future__ import annotations

import codecs

import datasets
import pytest

from grpo_lightning.data import DataSourceError, PromptDataModule, load_source

ROWS = [("What is 7 + 7?", "14"), ("Combien font 2 + 2 ?", "4"), ("What is 3 + 5?", "8")]


@pytest.fixture(autouse=True)
def hermetic_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def _text(suffix: str, rows=ROWS) -> str:
    if suffix == ".csv":
        return "question,answer\n" + "".join(f"{q},{a}\n" for q, a in rows)
    if suffix == ".jsonl":
        return "".join(f'{{"question": "{q}", "answer": "{a}"}}\n' for q, a in rows)
    return "[" + ", ".join(f'{{"question": "{q}", "answer": "{a}"}}' for q, a in rows) + "]"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_a_byte_that_is_not_utf8_is_named_with_its_line_and_offset(tmp_path, suffix):
    # Latin-1 "é" (0xe9) in the second row: pyarrow loads it and fails only when that row is read.
    rows = [ROWS[0], ("Combien font 2 + 2 ? Réponds.", "4"), ROWS[2]]
    data = _text(suffix, rows).encode("latin-1")
    path = tmp_path / f"train{suffix}"
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    line = data[:offset].count(b"\n") + 1  # 2, or 1 for the one-line .json
    with pytest.raises(DataSourceError) as info:
        load_source(str(path))
    message = str(info.value)
    assert f"The file '{path}' is not valid UTF-8: line {line} (byte offset {offset})" in message
    assert "b'\\xe9'" in message and f"iconv -f WINDOWS-1252 -t UTF-8 '{path}'" in message


def test_a_fault_is_placed_exactly_across_read_chunks(tmp_path, monkeypatch):
    # Reads of 4 bytes: "ç" (bytes 3-4) and "€" (bytes 7-9) are split between two reads.
    monkeypatch.setattr("grpo_lightning.data.files._CHUNK", 4)
    path = tmp_path / "t.jsonl"
    start = "ab\nçd\n€f\n".encode()  # 12 bytes, 3 lines
    for tail, line, offset in [
        (b"g\xffh\n", 4, 12 + 1),  # an invalid byte after the split characters
        ("€".encode()[:2], 4, 12),  # a character cut off at the end of the file
    ]:
        path.write_bytes(start + tail)
        with pytest.raises(DataSourceError, match=rf"line {line} \(byte offset {offset}\)"):
            load_source(str(path))
    path.write_bytes(b"ab\n\xc3A\n")  # a lead byte ending one read, no continuation byte in the next
    with pytest.raises(DataSourceError, match=r"line 2 \(byte offset 3\) holds the byte\(s\) b'\\xc3'"):
        load_source(str(path))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_a_utf8_byte_order_mark_is_read(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    path.write_bytes(codecs.BOM_UTF8 + _text(suffix).encode())
    train = load_source(str(path))["train"]
    assert train.column_names == ["question", "answer"]  # not "\ufeffquestion"
    assert train["question"] == [q for q, _ in ROWS]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_a_utf16_or_utf32_file_is_refused_with_the_command_that_converts_it(tmp_path, encoding):
    path = tmp_path / "train.csv"
    path.write_bytes(_text(".csv").encode(encoding))  # Python writes the byte-order mark first
    name = encoding.upper()
    with pytest.raises(DataSourceError, match=f"is {name} text .*iconv -f {name} -t UTF-8"):
        load_source(str(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"question,answer\nWhat is 7 + 7?,14\n", "is not a Parquet file .* It looks like text"),
        (b"PAR1\x15\x04\x15\x00", "is truncated: it begins like a Parquet file"),
        (b"\x00\x01\x02\x03binary", r"is not a Parquet file .*DataFrame\.to_parquet"),
    ],
)
def test_a_parquet_file_that_is_not_parquet_is_named(tmp_path, content, message):
    path = tmp_path / "train.parquet"
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match=message):
        load_source(str(path))


def test_each_file_of_a_split_mapping_is_checked(tmp_path):
    good, bad = tmp_path / "train.csv", tmp_path / "test.csv"
    good.write_text(_text(".csv"))
    bad.write_bytes(_text(".csv", [("Réponds", "1")]).encode("latin-1"))
    dm = PromptDataModule({"train": str(good), "test": str(bad)}, tokenizer="builtin:tiny-math")
    with pytest.raises(DataSourceError, match=f"The file '{bad}' is not valid UTF-8: line 2"):
        dm.setup("fit")
