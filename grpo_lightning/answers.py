"""Final-answer extraction shared by the data module (gold answers) and the rewards (predictions).

Pure string functions, no model or tokenizer involved:

- :func:`extract_hash_answer`: the text after the last GSM8K marker ``#### ...``.
- :func:`extract_last_boxed`: the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces handled.
- :func:`extract_gold_answer`: a gold answer from a GSM8K answer text, a MATH solution or a bare answer.
- :func:`parse_number` / :func:`last_number`: exact rational values (``fractions.Fraction``) of numbers
  written the way math answers are written: ``1,234``, ``$18.00``, ``-3/4``, ``\\frac{3}{4}``, ``90^\\circ``.
"""

from __future__ import annotations

import re
from fractions import Fraction

HASH_MARKER = "####"
_BOXED_COMMANDS = ("\\boxed", "\\fbox")

# One numeric token. Alternatives are ordered so that the longest reading wins at a position:
# a LaTeX fraction, a plain fraction, then a decimal with optional thousands separators.
# Thousands separators must group by three ("1,234,567"), so a list "1, 2, 3" stays three numbers.
_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# A minus sign counts only where it cannot be a binary minus ("19-3" holds 19 and 3, not -3).
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}])(?P<sign>[-−]))?\\?\$?\s*(?:"
    r"\\[dt]?frac\s*\{\s*(?P<lnum>" + _DECIMAL + r")\s*\}\s*\{\s*(?P<lden>" + _DECIMAL + r")\s*\}"
    r"|(?P<num>" + _DECIMAL + r")\s*/\s*(?P<den>" + _DECIMAL + r")"
    r"|(?P<dec>" + _DECIMAL + r")"
    r")"
)


def extract_hash_answer(text: str) -> str | None:
    """The text after the last ``####`` (GSM8K's answer marker), stripped; None without a marker or if empty.

    ``"... so 72 in total.\\n#### 72"`` -> ``"72"``.
    """
    _, marker, tail = text.rpartition(HASH_MARKER)
    if not marker:
        return None
    answer = tail.strip()
    return answer or None


def find_last_boxed(text: str) -> tuple[int, str] | None:
    """(start index, content) of the last complete ``\\boxed{...}`` or ``\\fbox{...}``; None if there is none.

    Braces nest (``\\boxed{\\frac{1}{\\sqrt{2}}}``). The form without braces, ``\\boxed 5``, gives the
    following token. A box whose braces never close is skipped (an earlier complete one is used).
    """
    best: tuple[int, str] | None = None
    for command in _BOXED_COMMANDS:
        search_from = len(text)
        while True:
            start = text.rfind(command, 0, search_from)
            if start < 0:
                break
            content = _box_content(text, start + len(command))
            if content is not None:
                if best is None or start > best[0]:
                    best = (start, content)
                break
            search_from = start
    return best


def extract_last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}``, stripped (see :func:`find_last_boxed`)."""
    found = find_last_boxed(text)
    return found[1].strip() if found is not None else None


def _box_content(text: str, pos: int) -> str | None:
    """Content of the box whose command ends at ``pos``; None when the braces never close."""
    rest = text[pos:]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        token = rest.split(maxsplit=1)
        return token[0].rstrip("$.,") if token else None
    stripped = rest.lstrip()
    if not stripped.startswith("{"):
        return None
    open_at = pos + (len(rest) - len(stripped))
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "{" and text[i - 1] != "\\":
            depth += 1
        elif ch == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


def extract_gold_answer(text: str | None) -> str | None:
    """A gold final answer from whatever a data set stores.

    - GSM8K answer text (worked solution ending in ``#### 72``) -> ``"72"``;
    - MATH solution (last ``\\boxed{...}``) -> its content;
    - otherwise the stripped text itself (MATH-500's ``answer`` column, a bare ``"16"``).
    Returns None for an empty text, a marker with nothing after it, or an unclosed box.
    """
    if text is None:
        return None
    text = str(text)
    if HASH_MARKER in text:
        return extract_hash_answer(text)
    if any(command in text for command in _BOXED_COMMANDS):
        return extract_last_boxed(text)
    return text.strip() or None


def _to_fraction(token: str) -> Fraction:
    return Fraction(token.replace(",", ""))


def _match_value(match: re.Match[str]) -> Fraction | None:
    groups = match.groupdict()
    if groups["lnum"] is not None:
        num, den = _to_fraction(groups["lnum"]), _to_fraction(groups["lden"])
    elif groups["num"] is not None:
        num, den = _to_fraction(groups["num"]), _to_fraction(groups["den"])
    else:
        num, den = _to_fraction(groups["dec"]), Fraction(1)
    if den == 0:
        return None
    value = num / den
    return -value if groups["sign"] else value


def parse_number(text: str | None) -> Fraction | None:
    """Exact value of the first number in ``text``; None if there is none.

    Commas as thousands separators, ``$`` and ``\\$``, a leading minus (ASCII or U+2212), decimals,
    ``a/b`` and ``\\frac{a}{b}``/``\\dfrac``/``\\tfrac`` are understood; anything after the number
    (units, ``%``, ``^\\circ``, a trailing period) is ignored. ``"$1,234.50 dollars."`` -> 2469/2.
    """
    if not text:
        return None
    for match in _NUMBER_RE.finditer(text):
        value = _match_value(match)
        if value is not None:
            return value
    return None


def last_number(text: str) -> Fraction | None:
    """Exact value of the last number in ``text`` (same forms as :func:`parse_number`); None if there is none."""
    last = None
    for match in _NUMBER_RE.finditer(text):
        value = _match_value(match)
        if value is not None:
            last = value
    return last
