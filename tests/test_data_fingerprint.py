"""The digests that identify the training batches: the same rows give the same digest however Arrow
holds them; another question, order or column value gives another."""

from __future__ import annotations

from datasets import Dataset

from grpo_lightning.data.fingerprint import content_digest, questions_digest

ROWS = {
    "question": ["1+1=", "2+3=", "4+4=", "5+1="],
    "answer": ["2", "5", "8", "6"],
    "level": [1, 2, None, 1],
    "prompt_messages": [[{"role": "user", "content": q}] for q in ["1+1=", "2+3=", "4+4=", "5+1="]],
}


def test_the_same_rows_held_differently_give_the_same_digests():
    plain = Dataset.from_dict(ROWS)
    # Reversed twice through an index (select), or cut out of a larger table: other layouts, same rows.
    indexed = Dataset.from_dict({k: v[::-1] for k, v in ROWS.items()}).select([3, 2, 1, 0])
    extra = {
        "question": "x",
        "answer": "y",
        "level": 0,
        "prompt_messages": [{"role": "user", "content": "x"}],
    }
    sliced = Dataset.from_dict({k: [extra[k], *v] for k, v in ROWS.items()}).select(range(1, 5))
    for other in (indexed, sliced):
        assert questions_digest(other) == questions_digest(plain)
        assert content_digest(other) == content_digest(plain)


def test_another_question_order_or_value_changes_the_right_digest():
    base = Dataset.from_dict(ROWS)
    reordered = base.select([1, 0, 2, 3])
    assert questions_digest(reordered) != questions_digest(base)
    answered = Dataset.from_dict({**ROWS, "answer": ["2", "5", "8", "7"]})  # a corrected gold answer
    assert questions_digest(answered) == questions_digest(base)
    assert content_digest(answered) != content_digest(base)
    conversation = [*ROWS["prompt_messages"][:3], [{"role": "system", "content": "Be brief."}]]
    talked = Dataset.from_dict({**ROWS, "prompt_messages": conversation})
    assert questions_digest(talked) != questions_digest(base)
    nulled = Dataset.from_dict({**ROWS, "level": [1, 2, 0, 1]})  # a missing value is not a 0
    assert content_digest(nulled) != content_digest(base)
    assert questions_digest(base.select(range(3))) != questions_digest(base)
