"""Checks of a local data file before the datasets library reads it, each failing with one clear error.

The library's own errors name neither the file nor the fix, and some problems pass it silently:
text that is not UTF-8 loads into an Arrow string column and only fails when that row is read, maybe
hours into training. So a text file (``.json``, ``.jsonl``, ``.csv``) is decoded in full first (a
UTF-8 byte-order mark is fine), and a ``.parquet`` file must begin and end with Parquet's marker.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from grpo_lightning.data.errors import DataSourceError

TEXT_SUFFIXES = (".json", ".jsonl", ".csv")
PARQUET_MAGIC = b"PAR1"
_CHUNK = 1 << 20
# Byte-order marks of encodings other than UTF-8 (UTF-32's first: it begins like UTF-16's).
_OTHER_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _reencode_fix(path: Path, encoding: str, known: bool = True) -> str:
    target = path.with_name(f"{path.stem}.utf8{path.suffix}")
    command = f"iconv -f {encoding} -t UTF-8 '{path}' > '{target}'"
    if known:
        return f"re-encode it as UTF-8 ({command}) and use that file"
    return (
        "re-encode it as UTF-8 from the encoding it was saved in (Windows-1252 and Latin-1 are common for "
        f"spreadsheet exports: {command}) and use that file"
    )


def check_utf8(path: Path) -> None:
    """Raise :class:`DataSourceError` naming the line and byte offset of the first byte of ``path``
    that is not UTF-8 (read in chunks: any size of file)."""
    with path.open("rb") as f:
        head = f.read(4)
        for bom, encoding in _OTHER_BOMS:
            if head.startswith(bom):
                raise DataSourceError(
                    f"The file '{path}' is {encoding} text (it starts with a {encoding} byte-order mark), and "
                    f"data files are read as UTF-8: {_reencode_fix(path, encoding)}."
                )
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset, line = 0, 1  # bytes and lines before the chunk being decoded
        while True:
            chunk = f.read(_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # err.object: the bytes held back from the previous chunk (part of one character), then this one.
                held = len(err.object) - len(chunk)
                position = offset - held + err.start
                line += err.object[: err.start].count(b"\n")
                bad = err.object[err.start : err.end]
                context = err.object[max(0, err.start - 30) : err.end + 10]
                raise DataSourceError(
                    f"The file '{path}' is not valid UTF-8: line {line} (byte offset {position}) holds the byte(s) "
                    f"{bad!r} in {context!r}. Data files are read as UTF-8: "
                    f"{_reencode_fix(path, 'WINDOWS-1252', known=False)}."
                ) from None
            if not chunk:
                return
            line += chunk.count(b"\n")
            offset += len(chunk)


def check_parquet(path: Path) -> None:
    """Raise :class:`DataSourceError` when ``path`` does not begin and end with Parquet's marker."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(len(PARQUET_MAGIC))
        f.seek(max(0, size - len(PARQUET_MAGIC)))
        tail = f.read(len(PARQUET_MAGIC))
    if head == PARQUET_MAGIC and tail == PARQUET_MAGIC and size > 2 * len(PARQUET_MAGIC):
        return
    if head == PARQUET_MAGIC:
        what = (
            "is truncated: it begins like a Parquet file but lacks the footer written last. Export it again"
        )
    else:
        with path.open("rb") as f:
            start = f.read(64)
        looks_text = start.lstrip()[:1] in (b"{", b"[") or b"," in start
        what = f"is not a Parquet file (it starts with {start[:16]!r}). " + (
            "It looks like text: give it the extension of its format (.csv, .json or .jsonl)"
            if looks_text
            else "Give a file written as Parquet (e.g. pandas' DataFrame.to_parquet)"
        )
    raise DataSourceError(f"The file '{path}' {what}.")


def check_data_file(path: Path) -> None:
    """The checks of a local data file: not empty, text in UTF-8, Parquet whole."""
    with path.open("rb") as f:
        head = f.read(4096)
    if not head.strip():
        raise DataSourceError(f"The file '{path}' is empty: it holds no rows. Check the path or the export.")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        check_utf8(path)
    elif suffix == ".parquet":
        check_parquet(path)
