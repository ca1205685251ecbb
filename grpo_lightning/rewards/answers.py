"""Final-answer extraction shared by the data module (gold answers) and the rewards (predictions).

Pure string functions, no model or tokenizer involved, each linear in the length of its input
(completions in RL can be degenerate: thousands of unclosed ``\\boxed{``, long runs of spaces):

- :func:`extract_hash_answer`: the text after the last GSM8K marker ``#### ...``.
- :func:`find_last_boxed` / :func:`extract_last_boxed`: the content of the last complete
  ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces handled, found by a scan from the end.
- :func:`extract_gold_answer`: a gold answer from a GSM8K answer text, a MATH solution or a bare answer.
- :func:`join_digit_groups`: ``10,\\!000``, ``1{,}234``, ``1\\,000`` -> ``10000``, ``1234``, ``1000``.
- :func:`parse_number` / :func:`last_number`: exact rational values (``fractions.Fraction``) of numbers
  written the way math answers are written: ``1,234``, ``$18.00``, ``-3/4``, ``\\frac{3}{4}``, ``90^\\circ``,
  ``-(1/3)`` (read by :mod:`grpo_lightning.rewards.number_reader`).
"""

from __future__ import annotations

import re
from fractions import Fraction

from grpo_lightning.rewards import number_reader

HASH_MARKER = "####"

# Digit-group separators that LaTeX sources and models write inside numbers: ``,\!`` (a comma
# without its space), ``{,}`` (a comma set as an ordinary symbol), the thin spaces ``\,`` ``\:``
# ``\;`` ``\ `` ``~`` ``\thinspace`` and their Unicode forms (thin, narrow no-break, no-break, figure,
# six-per-em space). A plain space is one only inside a marked answer (``\boxed{1 000}``).
_LATEX_SEPARATORS = r",\\!|\{,\}|\\[,:;! ]|~|\\thinspace\s?|[\u2009\u202f\u00a0\u2007\u2006]"
_GROUPS_LATEX_RE = re.compile(r"(?<![\d.])\d{1,3}(?:(?:" + _LATEX_SEPARATORS + r")\d{3})+(?!\d)")
_GROUPS_SPACED_RE = re.compile(r"(?<![\d.])\d{1,3}(?:(?:" + _LATEX_SEPARATORS + r"| )\d{3})+(?!\d)")
_NON_DIGIT_RE = re.compile(r"\D")

# The box commands and the unescaped braces that delimit their contents.
_BOX_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])|(?<!\\)[{}]")
_OPENING_RE = re.compile(r"\s*\{")
_FIRST_TOKEN_RE = re.compile(r" \s*(\S+)")
# The scan for the last box looks at the last 4 KiB first, then 4x more each time: the cost is
# proportional to how far from the end the box is, never worse than linear in the whole text.
_FIRST_WINDOW = 4096


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

    Braces nest (``\\boxed{\\frac{1}{\\sqrt{2}}}``); escaped braces ``\\{`` do not count. The form without
    braces, ``\\boxed 5``, gives the following token. A box whose braces never close is skipped (an
    earlier complete one is used). Time is linear in ``len(text)`` whatever the text holds.
    """
    found = find_last_box_span(text)
    return None if found is None else (found[0], found[2])


def find_last_box_span(text: str) -> tuple[int, int, str] | None:
    """(start, end, content) of the last complete box (as :func:`find_last_boxed`): ``text[start:end]``
    is the whole box, command and braces included."""
    window_start = len(text)
    window = _FIRST_WINDOW
    while window_start > 0:
        window_start = max(0, len(text) - window)
        found = _last_box_from(text, window_start)
        if found is not None:
            return found
        window *= 4
    return None


def _last_box_from(text: str, start: int) -> tuple[int, int, str] | None:
    """The last complete box that starts at or after ``start``, by one backward pass over the tokens.

    Walking backwards, each unescaped ``}`` is pushed and each ``{`` pops its partner: the pairing is
    the usual one (it depends only on the text after the ``{``), and a ``{`` that finds the stack
    empty never closes. A box command is complete when the brace right after it has a partner.
    """
    # Positions only (ints): a list of hundreds of thousands of match objects kept alive makes the
    # garbage collector scan a large heap again and again (5x slower inside a training process).
    positions = [match.start() for match in _BOX_TOKEN_RE.finditer(text, start)]
    closes: list[int] = []
    next_open: tuple[int, int | None] | None = None  # (position, partner) of the last "{" seen
    for pos in reversed(positions):
        char = text[pos]
        if char == "}":
            closes.append(pos)
        elif char == "{":
            next_open = (pos, closes.pop() if closes else None)
        else:
            command_end = pos + (len("\\boxed") if text.startswith("\\boxed", pos) else len("\\fbox"))
            content = _box_content(text, command_end, next_open)
            if content is not None:
                return pos, content[1], content[0]
    return None


def _box_content(text: str, end: int, next_open: tuple[int, int | None] | None) -> tuple[str, int] | None:
    """(content, end of the box) of the box whose command ends at ``end``; None when its braces never close."""
    if next_open is not None and _OPENING_RE.match(text, end):
        # Only whitespace between the command and the first "{" after it: that "{" opens the box.
        open_at, close_at = next_open
        return None if close_at is None else (text[open_at + 1 : close_at], close_at + 1)
    token = _FIRST_TOKEN_RE.match(text, end)  # "\boxed 5."
    return (token.group(1).rstrip("$.,"), token.end()) if token is not None else None


def extract_last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}``, stripped (see :func:`find_last_boxed`)."""
    found = find_last_boxed(text)
    return found[1].strip() if found is not None else None


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
    if "\\boxed" in text or "\\fbox" in text:
        return extract_last_boxed(text)
    return text.strip() or None


def join_digit_groups(text: str, plain_spaces: bool = False) -> str:
    """Numbers written with LaTeX digit-group separators, as plain digits.

    ``10,\\!000`` -> ``10000``, ``1{,}234`` -> ``1234``, ``1\\,000\\,000`` -> ``1000000`` (also thin
    spaces, ``~``, ``\\ ``). Groups after the first must have exactly three digits, so ``2\\,5`` stays.
    ``plain_spaces=True`` also joins ``1 000`` (right for a single marked answer such as a box's
    content, wrong for running text, where ``3 100`` can be two numbers). Plain commas are left alone.
    """
    pattern = _GROUPS_SPACED_RE if plain_spaces else _GROUPS_LATEX_RE
    return pattern.sub(lambda m: _NON_DIGIT_RE.sub("", m.group()), text)


def parse_number(text: str | None) -> Fraction | None:
    """Exact value of the first number in ``text``; None if there is none.

    Commas as thousands separators, ``$`` and ``\\$``, signs (ASCII or U+2212) wherever they stand
    (``-(1/3)``, ``\\frac{-1}{3}``, ``(-1)/3``), decimals, ``a/b``, ``\\frac{a}{b}``/``\\dfrac``/``\\tfrac``
    and groups around a number are understood (see :mod:`grpo_lightning.rewards.number_reader`); anything
    after the number (units, ``%``, ``^\\circ``, a trailing period) is ignored.
    ``"$1,234.50 dollars."`` -> 2469/2. A first number of more than ``number_reader.MAX_NUMBER_DIGITS``
    digits is unreadable: None.
    """
    if not text:
        return None
    return number_reader.first_number(text)


def last_number(text: str) -> Fraction | None:
    """Exact value of the last number in ``text`` (same forms as :func:`parse_number`); None if there is none.

    Only the numbers from the end back to the first one with a value are converted.
    """
    return number_reader.last_number(text)


# The GSM8K answer line, read the same way by the accuracy reward and the format reward.
#: Characters of a ``####`` line (or of the line after a bare "Final Answer" heading) that are read.
MAX_LINE_CHARS = 300
# Markdown emphasis and math delimiters that may wrap the answer: "**72**", "$72$", "\(72\)".
_WRAPPING = r"(?:[*_\s]|\\\(|\$)*"
_WRAPPING_RE = re.compile(_WRAPPING)
# A numbered markdown heading: "#### 2. Multiply the eggs", "#### 3) Add", "#### (1) Add".
_NUMBERED_HEADING_RE = re.compile(r"\s*\(?\d{1,2}[.)]\s+[A-Za-z]")
# "Answer", "Final Answer:", "**The final answer is**", followed by the answer or by nothing.
_ANSWER_LABEL_RE = re.compile(
    _WRAPPING
    + r"(?:the\s+)?(?:final\s+)?answer\b[*_]*(?:\s*(?:is\b|[:=])|\s*$)"
    + _WRAPPING
    + r"(?P<rest>.*)$",
    re.IGNORECASE,
)


def _starts_with_number(line: str) -> bool:
    """Whether ``line`` begins, after markdown emphasis and math delimiters, with a number (``-(1/3)``,
    ``$1,200``, ``\\frac{3}{4}``) or a box."""
    at = _WRAPPING_RE.match(line).end()  # type: ignore[union-attr]  (it always matches)
    return line.startswith("\\boxed", at) or number_reader.read_number(line, at) is not None


def hash_answer(line: str, following: str = "") -> str | None:
    """The answer a ``####`` line gives (``line``: what follows the marker on its line), or None if it
    is a heading. ``following`` is the text after that line, read when the line is a bare label."""
    if _starts_with_number(line):
        return None if _NUMBERED_HEADING_RE.match(line) else line
    label = _ANSWER_LABEL_RE.match(line)
    if label is None and line.strip():
        return None  # a heading
    if label is not None and label.group("rest").strip():
        return label.group("rest")
    # A bare label, or "####" alone on its line: the answer is on the next non-empty line.
    for next_line in following[:MAX_LINE_CHARS].splitlines():
        if next_line.strip():
            return next_line
    return None


def last_hash_answer(completion: str) -> tuple[int, str] | None:
    """(marker position, answer text) of the last ``####`` line that gives an answer (a line whose
    answer is a number or follows an answer label; other ``####`` lines are markdown headings); None when there is none. Each marker costs at most ``2 * MAX_LINE_CHARS``."""
    end = len(completion)
    while (at := completion.rfind(HASH_MARKER, 0, end)) >= 0:
        end = at
        start = at + len(HASH_MARKER)
        line_end = completion.find("\n", start, start + MAX_LINE_CHARS)
        line_end = start + MAX_LINE_CHARS if line_end < 0 else line_end
        line = completion[start:line_end].lstrip("#")  # "##### 5" has its marker at the last four
        answer = hash_answer(line, completion[line_end : line_end + 2 * MAX_LINE_CHARS])
        if answer is not None:
            return at, answer
    return None


def answer_number(answer: str | None) -> Fraction | None:
    """The number a marked answer (a ``####`` answer, a box's content, a gold answer) gives: digit
    groups joined (plain spaces too: it is one answer), then its first number; None if it has none."""
    return None if answer is None else parse_number(join_digit_groups(answer, plain_spaces=True))
