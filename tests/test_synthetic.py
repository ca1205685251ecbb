"""The synthetic problem generator: reproducible, correct answers, knobs that work, clear errors."""

from __future__ import annotations

import re

import pytest

from grpo_lightning.data.synthetic import MAX_MULTIPLIER, generate_problems

EQUATION = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")


def parse_chain(solution: str) -> tuple[list[tuple[int, str, int, int]], int]:
    """ "12+7=19, 19-3=16 #### 16" -> ([(12, "+", 7, 19), (19, "-", 3, 16)], 16)."""
    body, final = solution.split(" #### ")
    steps = []
    for equation in body.split(", "):
        match = EQUATION.match(equation)
        assert match, f"malformed equation {equation!r} in {solution!r}"
        a, op, b, c = match.groups()
        steps.append((int(a), op, int(b), int(c)))
    return steps, int(final)


def arithmetic_value(question: str) -> int:
    """Evaluate "What is (3 + 4) * 2?" independently of the generator, with ordinary precedence."""
    match = re.fullmatch(r"What is ([\d +\-*()]+)\?", question)
    assert match, f"unexpected question {question!r}"
    return eval(match.group(1), {"__builtins__": {}})  # only digits, spaces, + - * and parentheses


def check_chain(row: dict[str, str]) -> list[tuple[int, str, int, int]]:
    """Every equation is right, each starts from the previous result, and the answer is the last one."""
    steps, final = parse_chain(row["solution"])
    for i, (a, op, b, c) in enumerate(steps):
        assert c == {"+": a + b, "-": a - b, "*": a * b}[op], row
        if i > 0:
            assert a == steps[i - 1][3], row
    assert final == steps[-1][3] == int(row["answer"]), row
    return steps


def test_same_seed_same_problems_different_seed_different_problems() -> None:
    kwargs = {"min_steps": 1, "max_steps": 3, "operations": "+-*"}
    for style in ("arithmetic", "word", "phrased"):
        first = generate_problems(50, seed=7, style=style, **kwargs)
        assert first == generate_problems(50, seed=7, style=style, **kwargs)
        other = generate_problems(50, seed=8, style=style, **kwargs)
        assert sum(a != b for a, b in zip(first, other, strict=True)) > 40  # a few may coincide by chance
    assert generate_problems(0) == []


@pytest.mark.parametrize("allow_negative", [False, True])
@pytest.mark.parametrize("operations", ["+", "-", "+-", "*", "+-*"])
def test_arithmetic_answers_match_an_independent_evaluation(operations: str, allow_negative: bool) -> None:
    rows = generate_problems(300, seed=1, max_steps=3, operations=operations, allow_negative=allow_negative)
    for row in rows:
        steps = check_chain(row)
        assert arithmetic_value(row["question"]) == int(row["answer"]), row
        assert {op for _, op, _, _ in steps} <= set(operations)
    if not allow_negative:
        assert all(c >= 0 for row in rows for *_, c in parse_chain(row["solution"])[0])


PHRASED = re.compile(
    r"(?:Compute (?P<a>[\d +\-*()]+)\.|Calculate (?P<b>[\d +\-*()]+)\.|Work out (?P<c>[\d +\-*()]+)\."
    r"|What's (?P<d>[\d +\-*()]+)\?|How much is (?P<e>[\d +\-*()]+)\?|Find (?P<f>[\d +\-*()]+)\.)"
)


def test_phrased_problems_are_the_arithmetic_ones_in_other_words() -> None:
    kwargs = {"min_steps": 1, "max_steps": 3, "operations": "+-*", "allow_negative": True}
    phrased = generate_problems(300, seed=3, style="phrased", **kwargs)
    plain = generate_problems(300, seed=3, **kwargs)
    used = set()
    for row, twin in zip(phrased, plain, strict=True):
        match = PHRASED.fullmatch(row["question"])
        assert match, row
        (name, expr), = [(k, v) for k, v in match.groupdict().items() if v is not None]
        used.add(name)
        # The same chain as the arithmetic style draws from the same seed, in other words.
        assert f"What is {expr}?" == twin["question"]
        assert (row["solution"], row["answer"]) == (twin["solution"], twin["answer"])
        assert eval(expr, {"__builtins__": {}}) == int(row["answer"])
    assert used == set("abcdef")  # every phrasing occurs


def test_allow_negative_produces_negative_results() -> None:
    rows = generate_problems(300, seed=2, max_steps=3, operations="-", allow_negative=True)
    assert any(int(row["answer"]) < 0 for row in rows)
    assert any("=-" in row["solution"] for row in rows)  # a negative intermediate is written as such


def test_word_problems_tell_the_chain_of_their_solution() -> None:
    """Recompute each word problem from its own text: the numbers in order and the verb of each sentence."""
    rows = generate_problems(300, seed=3, max_steps=3, operations="+-*", style="word")
    for row in rows:
        steps = check_chain(row)
        question = row["question"]
        assert question.endswith("have now?")
        assert not re.search(r" has 1 \w+s\.", question), question  # "Leo has 1 coin.", not "1 coins."
        sentences = question.split(". ")[1:]  # drop "Tom has 12 apples"; the last one holds the question
        numbers = [int(x) for x in re.findall(r"\d+", question)]
        assert numbers == [steps[0][0]] + [b for _, _, b, _ in steps], row
        for (_, op, _, _), sentence in zip(steps, sentences[:-1], strict=True):
            expected = "+" if " more" in sentence else "*" if "times as many" in sentence else "-"
            assert op == expected, (sentence, row)


def test_a_worked_example() -> None:
    rows = generate_problems(200, seed=0, min_steps=2, max_steps=2)
    assert all(len(parse_chain(r["solution"])[0]) == 2 for r in rows)
    row = rows[0]
    assert re.fullmatch(r"What is \d+ [+-] \d+ [+-] \d+\?", row["question"])
    assert re.fullmatch(r"\d+[+-]\d+=\d+, \d+[+-]\d+=\d+ #### \d+", row["solution"])


def test_multiplication_gets_parentheses_where_precedence_differs() -> None:
    rows = generate_problems(300, seed=4, min_steps=2, max_steps=2, operations="+*")
    mixed = [r for r in rows if parse_chain(r["solution"])[0][0][1] == "+" and "*" in r["solution"]]
    assert mixed and all(r["question"].startswith("What is (") for r in mixed)


def test_knobs_change_the_problems() -> None:
    def steps_of(rows: list[dict[str, str]]) -> set[int]:
        return {len(parse_chain(r["solution"])[0]) for r in rows}

    assert steps_of(generate_problems(200, min_steps=1, max_steps=1)) == {1}
    assert steps_of(generate_problems(200, min_steps=3, max_steps=4)) == {3, 4}

    def operands(rows: list[dict[str, str]]) -> list[int]:
        return [x for r in rows for a, op, b, _ in parse_chain(r["solution"])[0] for x in (a, b)]

    small = operands(generate_problems(300, max_operand=5, operations="+"))
    large = operands(generate_problems(300, max_operand=99, operations="+"))
    assert max(small) <= 5 * 3 and max(large) > 50  # a sum of <= 3 operands of at most 5
    first = [parse_chain(r["solution"])[0][0][0] for r in generate_problems(300, max_operand=99)]
    assert min(first) >= 1 and max(first) <= 99 and max(first) > 80

    multipliers = [
        b
        for r in generate_problems(300, operations="*", max_steps=3)
        for _, _, b, _ in parse_chain(r["solution"])[0]
    ]
    assert set(multipliers) == set(range(2, MAX_MULTIPLIER + 1))  # small multipliers, all of them used

    arithmetic = generate_problems(20, seed=5)
    word = generate_problems(20, seed=5, style="word")
    assert all(q["question"].startswith("What is") for q in arithmetic)
    assert not any(q["question"].startswith("What is") for q in word)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n=-1"),
        ({"n": 2.5}, "n=2.5"),
        ({"min_steps": 0}, "min_steps=0"),
        ({"min_steps": 3, "max_steps": 2}, "max_steps=2 is below min_steps=3"),
        ({"max_operand": 1}, "max_operand=1"),
        ({"operations": ""}, "operations=''"),
        ({"operations": "+/"}, "unknown: '/'"),
        ({"style": "essay"}, "style='essay'"),
        ({"style": "word", "allow_negative": True}, "allow_negative=True needs style='arithmetic'"),
        ({"operations": "-", "max_operand": 3, "max_steps": 5}, "cannot stay >= 0"),
    ],
)
def test_bad_knobs_give_clear_errors(kwargs: dict[str, object], message: str) -> None:
    n = kwargs.pop("n", 5)
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_problems(n, **kwargs)  # type: ignore[arg-type]
