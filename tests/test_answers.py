"""Final-answer extraction: markers, boxes with nested braces, digit groups, exact number parsing; all
in linear time on adversarial inputs."""

import time
from fractions import Fraction

import pytest
from helpers import answers_first_window, count_executed_lines
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_lightning.rewards import _normalize, answers, gsm8k, number_reader
from grpo_lightning.rewards.answers import (
    extract_gold_answer,
    extract_hash_answer,
    extract_last_boxed,
    find_last_boxed,
    join_digit_groups,
    last_number,
    parse_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### 1,234  ", "1,234"),
        ("first #### 3\nthen #### 4", "4"),  # the last marker wins
        ("####", None),  # a marker with nothing after it
        ("no marker here", None),
    ],
)
def test_extract_hash_answer(text, expected):
    assert extract_hash_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{5}$.", "5"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"\boxed{1} and later \boxed{2}", "2"),  # the last box wins
        (r"\fbox{3} then \boxed{4}", "4"),
        (r"\boxed{4} then \fbox{3}", "3"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not count
        (r"\boxed 7.", "7"),  # the brace-less form takes the next token
        (r"\boxed{1} then an unclosed \boxed{2", "1"),  # an unclosed box is skipped
        (r"\boxed{\frac{1}{2}", None),  # never closed and nothing earlier
        ("no box", None),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Janet has 3 + 4 = 7 eggs.\n#### 7", "7"),  # GSM8K answer text
        (r"Hence the answer is $\boxed{\frac{14}{3}}$.", r"\frac{14}{3}"),  # MATH solution
        (r"  \frac{14}{3} ", r"\frac{14}{3}"),  # bare answer (MATH-500's answer column)
        ("16", "16"),
        ("", None),
        (None, None),
        (r"a box that never closes \boxed{3", None),
    ],
)
def test_extract_gold_answer(text, expected):
    assert extract_gold_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", Fraction(18)),
        ("18.0", Fraction(18)),
        ("-7 apples", Fraction(-7)),
        ("−7", Fraction(-7)),  # U+2212 minus sign
        ("$1,234.50 dollars.", Fraction(2469, 2)),
        (r"\$5", Fraction(5)),
        ("-$5", Fraction(-5)),
        ("1,000,000", Fraction(1_000_000)),
        ("3/4", Fraction(3, 4)),
        ("-3/4.", Fraction(-3, 4)),
        (r"\frac{3}{4}", Fraction(3, 4)),
        (r"\dfrac{3}{4}", Fraction(3, 4)),
        (r"-\tfrac{1}{2}", Fraction(-1, 2)),
        (".5", Fraction(1, 2)),
        (r"90^\circ", Fraction(90)),
        ("25%", Fraction(25)),
        ("1,2345", Fraction(1)),  # not a thousands grouping: two numbers, 1 and 2345
        ("3/0", None),  # no value, and nothing else to read
        ("no digits", None),
        ("", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12+7=19, 19-3=16", Fraction(16)),
        ("19-3", Fraction(3)),  # a binary minus is not a sign
        ("x = -3", Fraction(-3)),
        ("1, 2, 3", Fraction(3)),
        ("It costs $1,200 in total.", Fraction(1200)),
        ("nothing", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


# --- Linear-time extraction -------------------------------------------------------------------


def _reference_find_last_boxed(text):
    """The obvious implementation (for each box from the end, scan forward for its closing brace):
    right on every input, but quadratic on unclosed boxes. The fast one must agree with it."""
    best = None
    for command in ("\\boxed", "\\fbox"):
        search_from = len(text)
        while (start := text.rfind(command, 0, search_from)) >= 0:
            content = _reference_box_content(text, start + len(command))
            if content is not None:
                if best is None or start > best[0]:
                    best = (start, content)
                break
            search_from = start
    return best


def _reference_box_content(text, pos):
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
        if text[i] == "{" and text[i - 1] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


PIECES = ["\\boxed", "\\fbox", "{", "}", "\\{", "\\}", " ", "\n", "x", "5", "$", ".", "\\boxedx", "\\\\"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=16), st.sampled_from([4, 4096]))
def test_find_last_boxed_agrees_with_the_obvious_implementation(pieces, window):
    text = "".join(pieces)
    with answers_first_window(window):
        assert find_last_boxed(text) == _reference_find_last_boxed(text)


def test_degenerate_inputs_that_used_to_hang():
    # Thousands of unclosed boxes after (or without) a complete one: each used to rescan the rest.
    assert find_last_boxed("\\boxed{42} " + "\\boxed{" * 20_000) == (0, "42")
    assert find_last_boxed("So the answer is \\boxed{\\frac{1}{2} " * 3000) is None
    assert last_number("$" + " " * 50_000) is None  # a failed match per space scanned the whole run
    assert last_number("7 then" + " " * 50_000 + "$") == Fraction(7)


TRACED_FILES = {answers.__file__, number_reader.__file__, gsm8k.__file__, _normalize.__file__}


def count_lines(fn, *args) -> int:
    """Python lines executed in the traced modules while running ``fn(*args)``."""
    return count_executed_lines(TRACED_FILES, fn, *args)


STRICT, FLEXIBLE = gsm8k.Gsm8kAccuracy("strict"), gsm8k.Gsm8kAccuracy("flexible")
ADVERSARIAL = {
    "unclosed boxes after a box": lambda n: "\\boxed{42} " + "\\boxed{" * n,
    "repeated unclosed fraction boxes": lambda n: "So the answer is \\boxed{\\frac{1}{2} " * n,
    "deep nesting": lambda n: "{" * n + "\\boxed{1}" + "}" * n,
    "boxes without braces": lambda n: "\\boxed " * n + "{",
    "markdown headings": lambda n: "#### Step 1: add\n" * n,
    "escaped braces": lambda n: "\\boxed{" + "\\{" * n,
    "digit groups": lambda n: "\\boxed{" + "1\\,000" * n,
}
EXTRACTORS = {
    "find_last_boxed": find_last_boxed,
    "strict": STRICT.predicted_number,
    "flexible": FLEXIBLE.predicted_number,
    "normalize": lambda text: _normalize.normalize_answer(extract_last_boxed(text)),
}


@pytest.mark.parametrize("extractor", EXTRACTORS)
@pytest.mark.parametrize("family", ADVERSARIAL)
def test_extraction_work_grows_linearly(family, extractor):
    # Work counted as executed Python lines, so the test is exact and independent of machine load.
    # The first window of the scan from the end is made small so that it grows here too.
    make, fn = ADVERSARIAL[family], EXTRACTORS[extractor]
    with answers_first_window(64):
        small, large = count_lines(fn, make(300)), count_lines(fn, make(1200))
    assert large <= 4 * small * 1.25 + 50, (small, large)  # 4x the input: at most ~4x the work


@pytest.mark.parametrize("family", ADVERSARIAL)
def test_regex_work_is_bounded_on_long_adversarial_inputs(family):
    # The regular expressions run in C, invisible to the line count above. A quadratic one needs
    # minutes here (the old number pattern: 22 s for 20,000 spaces, 100x that for 200,000); linear
    # ones take milliseconds. The bound is 1,000x the expected time: a check of the order, not a timing.
    text = ADVERSARIAL[family](40_000)
    start = time.process_time()
    for fn in EXTRACTORS.values():
        fn(text)
    last_number("$" + " " * 200_000)
    assert time.process_time() - start < 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10,\\!000", "10000"),
        ("1{,}234", "1234"),
        ("1\\,000", "1000"),
        ("1\\,000\\,000", "1000000"),
        ("1\u2009000", "1000"),  # thin space
        ("1\u202f000", "1000"),  # narrow no-break space
        ("1~000", "1000"),
        ("1\\ 000", "1000"),
        ("1\\,234.5", "1234.5"),
        ("2\\,5", "2\\,5"),  # not a group of three: left alone
        ("12\\,3456", "12\\,3456"),
        ("1,234", "1,234"),  # plain commas are left to the number reader
        ("1 000", "1 000"),  # a plain space joins only with plain_spaces=True
        ("0.123\\,456", "0.123\\,456"),  # decimals are not regrouped
    ],
)
def test_join_digit_groups(text, expected):
    assert join_digit_groups(text) == expected


def test_join_digit_groups_plain_spaces():
    assert join_digit_groups("1 000 000 and 3 5", plain_spaces=True) == "1000000 and 3 5"


def test_overlong_numbers_are_unreadable_not_an_error():
    # int() refuses strings over 4,300 digits; such a "number" is no answer.
    assert parse_number("1" * 5000) is None
    assert last_number("5 then " + "1" * 5000) is None
    assert parse_number("9" * 100) == Fraction(int("9" * 100))
