"""Named seed streams: the numbers the draws had before they were named, and no two streams alike."""

from __future__ import annotations

import pytest

from grpo_lightning.rollout.seeds import SeedStream, stream_seed

M = 2**63 - 1
#: The rounds of the streams that have them: a step's 20 refill rounds after its own batch.
ROUNDS = {SeedStream.ROLLOUT: range(21), SeedStream.REFILL: range(1, 21)}


def test_seeds_are_the_numbers_each_stream_had_before():
    """Hand-computed from base * 1_000_003 + rank * 7_919 + index * 104_729 + slot * 15_485_863 (+ 1 for
    the evaluation samples), the slots being those the draws used before the streams had names."""
    assert stream_seed(0, 0, 0, SeedStream.ROLLOUT) == 0
    assert stream_seed(3, 1, 2, SeedStream.ROLLOUT) == 3_000_009 + 7_919 + 209_458  # = 3_217_386
    assert stream_seed(3, 1, 2, SeedStream.SHUFFLE) == 3_217_386 + 7 * 15_485_863
    assert stream_seed(3, 1, 2, SeedStream.EVALUATION) == M + 3_217_386 - 15_485_863  # wrapped
    assert stream_seed(3, 1, 2, SeedStream.EVALUATION_SAMPLES) == M + 3_217_386 - 15_485_863 + 1
    # Below zero wraps into [0, 2**63 - 1), which manual_seed takes.
    assert stream_seed(0, 0, 0, SeedStream.EVALUATION) == M - 15_485_863


def test_dynamic_sampling_rounds_take_slots_after_the_shuffle():
    """Round r >= 1 took slot r, so round 7 drew with the mini-batch shuffle's seed; now slot 7 + r."""
    assert stream_seed(3, 1, 2, SeedStream.ROLLOUT, round_=1) == 3_217_386 + 8 * 15_485_863
    assert stream_seed(3, 1, 2, SeedStream.ROLLOUT, round_=7) == 3_217_386 + 14 * 15_485_863
    assert stream_seed(3, 1, 2, SeedStream.ROLLOUT, round_=7) != stream_seed(3, 1, 2, SeedStream.SHUFFLE)


def test_no_two_draws_share_a_seed():
    """Every stream, 8 ranks, 1000 steps or batches and 20 dynamic-sampling rounds (refill prompts
    included): all seeds distinct."""
    keys = [
        (stream, rank, index, r)
        for stream in SeedStream
        for rank in range(8)
        for index in range(1000)
        for r in ROUNDS.get(stream, [0])
    ]
    seeds = {stream_seed(5, rank, index, stream, r) for stream, rank, index, r in keys}
    assert len(seeds) == len(keys)
    assert all(0 <= s < M for s in seeds)


def test_refill_prompts_sit_next_to_their_rounds_completions():
    """Round r's refill prompts: round r's slot (7 + r), offset 2; never the completions' own seed."""
    assert stream_seed(3, 1, 2, SeedStream.REFILL, round_=1) == 3_217_386 + 8 * 15_485_863 + 2
    assert stream_seed(3, 1, 2, SeedStream.REFILL, round_=4) == 3_217_386 + 11 * 15_485_863 + 2
    for r in range(1, 5):
        assert stream_seed(3, 1, 2, SeedStream.REFILL, r) != stream_seed(3, 1, 2, SeedStream.ROLLOUT, r)


def test_rounds_belong_to_rollouts_and_refills_only():
    with pytest.raises(ValueError, match="only ROLLOUT and REFILL have rounds"):
        stream_seed(0, 0, 0, SeedStream.SHUFFLE, round_=1)
    with pytest.raises(ValueError, match="numbered from 1"):
        stream_seed(0, 0, 0, SeedStream.REFILL)  # round 0 samples the step's own batch: no refill
    with pytest.raises(ValueError, match="round_=-1"):
        stream_seed(0, 0, 0, SeedStream.ROLLOUT, round_=-1)
    with pytest.raises(TypeError, match="SeedStream"):
        stream_seed(0, 0, 0, 7)  # type: ignore[arg-type]
