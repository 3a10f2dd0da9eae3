"""Pair building (best/worst, ties, truncated, empty, length shaping, auto alpha, best_random)
and experience replay, on hand-made groups of real ``Sample`` objects."""

from __future__ import annotations

import json
import random

import pytest

from lrdpo_fast.loop.pairs import PairStats, ScoredGroup, build_pairs
from lrdpo_fast.loop.replay import mix_replay
from lrdpo_fast.loop.samples import Sample

EOS = 2


def sample(n_tokens: int, *, prompt=(1, 40, 41), finish="stop", eos=True, text=None, start=10) -> Sample:
    """A response of ``n_tokens`` ids (the last one EOS when it stopped on EOS)."""
    ids = list(range(start, start + n_tokens))
    if finish == "stop" and eos and n_tokens:
        ids[-1] = EOS
    return Sample(
        prompt_ids=list(prompt),
        response_ids=ids,
        text=f"r{n_tokens}" if text is None else text,
        finish_reason=finish,
        truncated=finish == "length",
    )


def group(text, lengths, scores, **kw):
    """(text prompt, samples of these lengths, scores); ``kw`` go to ``sample``."""
    return (text, [sample(n, start=10 + 100 * j, **kw) for j, n in enumerate(lengths)], list(scores))


def test_best_worst_picks_records_carry_exact_ids():
    samples = [sample(4, start=10), sample(6, start=20), sample(3, start=30, eos=False)]
    pairs, stats = build_pairs([("Q?", samples, [0.5, 0.9, 0.1])])
    assert len(pairs) == 1 and stats.kept == 1
    p = pairs[0]
    assert p["chosen_input_ids"] == samples[1].response_ids and p["rejected_input_ids"] == samples[2].response_ids
    assert p["prompt_input_ids"] == [1, 40, 41]
    assert (p["prompt"], p["chosen"], p["rejected"]) == ("Q?", "r6", "r3")
    assert (p["chosen_length"], p["rejected_length"], p["chosen_score"], p["rejected_score"]) == (6, 3, 0.9, 0.1)
    assert json.loads(json.dumps(pairs)) == pairs
    assert (stats.mean_chosen_length, stats.mean_rejected_length, stats.mean_length_gap) == (6, 3, 3)
    assert json.loads(json.dumps(stats.to_dict()))["kept"] == 1


def test_records_load_into_the_trainer_format_without_retokenizing():
    from lrdpo_fast.data.files import load_pairs

    samples = [sample(4, start=10), sample(5, start=20, finish="stop", eos=False)]  # a stop-string end
    pairs, _ = build_pairs([([{"role": "user", "content": "Q?"}], samples, [1.0, 0.0])])
    (ex,) = load_pairs(pairs, None, max_length=None)
    assert ex.prompt_ids == samples[0].prompt_ids
    assert ex.chosen_ids == samples[0].response_ids  # already ends with EOS: not appended again
    (ex,) = load_pairs(pairs, _EosOnly())
    assert ex.chosen_ids == samples[0].response_ids
    assert ex.rejected_ids == samples[1].response_ids + [EOS]  # no EOS sampled: the loader appends one


def test_a_truncated_sample_is_trained_without_an_eos():
    """drop_truncated=False keeps samples cut by the token budget: they never sampled an EOS, so
    the loader must not append one (training would score a token the policy never produced)."""
    from lrdpo_fast.data.files import load_pairs

    samples = [sample(6, start=10, finish="length"), sample(3, start=30)]
    pairs, _ = build_pairs([("Q?", samples, [1.0, 0.0])], drop_truncated=False)
    (p,) = pairs
    assert (p["chosen_truncated"], p["rejected_truncated"]) == (True, False)
    (ex,) = load_pairs(pairs, _EosOnly())
    assert ex.chosen_ids == samples[0].response_ids  # no EOS appended after the cut
    assert ex.rejected_ids == samples[1].response_ids  # ended on its own EOS


class _EosOnly:
    """The one tokenizer attribute ``tokenize_record`` reads for pre-tokenized records."""

    eos_token_id = EOS
    bos_token_id = 1


def test_ties_truncated_empty_and_too_few_are_dropped_and_counted():
    groups = [
        group("kept", [3, 4, 5], [0.0, 1.0, 0.5]),
        group("tie", [3, 4], [0.7, 0.7]),
        group("gap", [3, 4], [0.7, 0.9]),  # 0.2 <= min_score_gap
        ("trunc", [sample(9, finish="length"), sample(3, start=50), sample(4, start=60)], [5.0, 0.0, 1.0]),
        ("one left", [sample(9, finish="length"), sample(3, start=50)], [5.0, 0.0]),
        ("empty", [sample(1, text=""), sample(0), sample(3, start=50), sample(4, start=60)], [9.0, 8.0, 0.0, 1.0]),
        ("alone", [sample(3)], [1.0]),
        ("none", [], []),
    ]
    pairs, st = build_pairs(groups, min_score_gap=0.25)
    assert [p["prompt"] for p in pairs] == ["kept", "trunc", "empty"]
    assert [p["prompt_index"] for p in pairs] == [0, 3, 5]
    trunc = pairs[1]
    assert trunc["chosen_length"] == 4 and trunc["rejected_length"] == 3  # the truncated best is not used
    assert (st.groups, st.samples, st.kept) == (8, 17, 3)
    assert st.dropped == {"truncated": 2, "empty": 2, "too_few": 3, "ties": 2}
    assert st.mean_chosen_score == pytest.approx((1.0 + 1.0 + 1.0) / 3)
    assert st.mean_rejected_score == pytest.approx(0.0)
    # keeping truncated samples changes the trunc pair and rescues "one left"
    pairs, st = build_pairs(groups, min_score_gap=0.25, drop_truncated=False)
    assert [p["prompt"] for p in pairs] == ["kept", "trunc", "one left", "empty"]
    assert pairs[1]["chosen_length"] == 9 and st.dropped_truncated == 0
    # with no gap required, "gap" is kept and an exact tie is still a tie
    _, st = build_pairs(groups)
    assert st.kept == 4 and st.dropped_ties == 1


def test_length_alpha_shapes_the_choice():
    groups = [group("q", [20, 5, 12], [1.0, 0.8, 0.0])]
    pairs, _ = build_pairs(groups)  # raw: long best, 12-token worst
    assert (pairs[0]["chosen_length"], pairs[0]["rejected_length"]) == (20, 12)
    pairs, st = build_pairs(groups, length_alpha=0.05)  # shaped: 0.0, 0.55, -0.6
    assert (pairs[0]["chosen_length"], pairs[0]["rejected_length"]) == (5, 12)
    assert st.length_alpha == 0.05 and not st.length_alpha_auto and st.length_alpha_grid == 1
    assert pairs[0]["chosen_score"] == 0.8  # records carry the raw score


def _judge_groups(n_prompts=40, k=6, seed=0, bias=0.05):
    """Scores = quality + bias * length: longer responses score higher."""
    rng = random.Random(seed)
    groups = []
    for i in range(n_prompts):
        lengths = [rng.randint(3, 60) for _ in range(k)]
        scores = [rng.random() + bias * n for n in lengths]
        groups.append(group(f"p{i}", lengths, scores, prompt=(1, 100 + i)))
    return groups


def test_auto_alpha_removes_the_length_gap_and_is_the_smallest():
    groups = _judge_groups()
    _, raw = build_pairs(groups)
    assert raw.mean_length_gap > 20  # the judge's length bias reaches the pairs
    pairs, st = build_pairs(groups, length_alpha="auto")
    assert st.length_alpha_auto and st.length_alpha > 0 and st.length_alpha_grid > 10
    gap = sum(p["chosen_length"] - p["rejected_length"] for p in pairs) / len(pairs)
    assert gap == pytest.approx(st.mean_length_gap)
    assert abs(gap) < 1.0
    # the same alpha given explicitly makes the same pairs
    fixed, _ = build_pairs(groups, length_alpha=st.length_alpha)
    assert fixed == pairs
    # no alpha on a fine sweep does better, and every smaller one does worse
    for k in range(0, 301):
        a = st.length_alpha * k / 150
        _, s = build_pairs(groups, length_alpha=a)
        if s.kept:
            assert abs(s.mean_length_gap) >= abs(gap) - 1e-12
            if a < st.length_alpha * (1 - 1e-9) and abs(s.mean_length_gap) == abs(gap):
                # a smaller alpha equally good can only lie in the same interval of selections
                assert build_pairs(groups, length_alpha=a)[0] == pairs


def test_auto_alpha_is_zero_without_length_bias_and_with_nothing_to_pair():
    groups = [group("a", [5, 5, 5], [0.1, 0.9, 0.4]), group("b", [7, 7], [1.0, 0.0])]
    pairs, st = build_pairs(groups, length_alpha="auto")
    assert st.length_alpha == 0.0 and st.kept == 2
    _, st = build_pairs([group("a", [5], [1.0])], length_alpha="auto")
    assert (st.length_alpha, st.kept, st.mean_chosen_length) == (0.0, 0, None)


def test_auto_alpha_respects_min_score_gap():
    groups = _judge_groups(n_prompts=25, k=4, seed=3)
    pairs, st = build_pairs(groups, length_alpha="auto", min_score_gap=0.1)
    for p in pairs:
        a = st.length_alpha
        assert (p["chosen_score"] - a * p["chosen_length"]) - (p["rejected_score"] - a * p["rejected_length"]) > 0.1


def test_best_random_is_seeded_and_never_picks_a_tie():
    groups = [group(f"p{i}", [3, 4, 5, 6, 7], [1.0, 0.2, 0.4, 0.6, 0.95], prompt=(1, i)) for i in range(30)]
    a, st = build_pairs(groups, strategy="best_random", seed=1, min_score_gap=0.1)
    b, _ = build_pairs(groups, strategy="best_random", seed=1, min_score_gap=0.1)
    c, _ = build_pairs(groups, strategy="best_random", seed=2, min_score_gap=0.1)
    assert a == b and a != c and st.strategy == "best_random"
    assert all(p["chosen_length"] == 3 for p in a)
    rejected = {p["rejected_length"] for p in a}
    assert rejected == {4, 5, 6}  # uniform over the valid, non-tied others (7 is within the gap)
    worst, _ = build_pairs(groups, seed=1)
    assert {p["rejected_length"] for p in worst} == {4}


def test_scored_group_and_bad_arguments_name_the_field():
    s = [sample(3), sample(4, start=50)]
    pairs, _ = build_pairs([ScoredGroup("q", s, [0.0, 1.0])])
    assert pairs[0]["chosen_length"] == 4
    with pytest.raises(ValueError, match="strategy"):
        build_pairs([], strategy="best_of_n")
    for bad in (-0.1, "fast", float("nan"), True):
        with pytest.raises(ValueError, match="length_alpha"):
            build_pairs([], length_alpha=bad)
    with pytest.raises(ValueError, match="min_score_gap"):
        build_pairs([], min_score_gap=-1)
    with pytest.raises(ValueError, match=r"groups\[1\]\.scores has 1 values for 2 samples"):
        build_pairs([("q", s, [0.0, 1.0]), ("r", s, [0.0])])
    with pytest.raises(ValueError, match=r"groups\[0\]\.scores\[1\]"):
        build_pairs([("q", s, [0.0, float("nan")])])
    with pytest.raises(ValueError, match=r"groups\[0\]\.samples\[0\] must be a Sample"):
        build_pairs([("q", [s[0].to_record(), s[1]], [0.0, 1.0])])
    with pytest.raises(ValueError, match="different prompt_ids"):
        build_pairs([("q", [s[0], sample(4, prompt=(1, 2))], [0.0, 1.0])])
    with pytest.raises(ValueError, match=r"groups\[0\]\.prompt"):
        build_pairs([(None, s, [0.0, 1.0])])
    with pytest.raises(ValueError, match=r"group\.scores"):
        ScoredGroup("q", s, [0.0])
    assert isinstance(build_pairs([])[1], PairStats)


# ---- replay -----------------------------------------------------------------------------------------
def _offline(i, prompt=None):
    return {"prompt": f"offline {i}" if prompt is None else prompt, "chosen": "a", "rejected": "b"}


def test_mix_replay_ratio_and_prompt_exclusion():
    generated, _ = build_pairs([group(f"gen {i}", [3, 4], [0.0, 1.0], prompt=(1, 200 + i)) for i in range(10)])
    offline = [_offline(i) for i in range(30)]
    offline += [
        _offline(0, "gen 3"),
        _offline(0, [{"role": "user", "content": "gen 4 "}]),
        {"prompt_input_ids": [1, 205], "chosen_input_ids": [5], "rejected_input_ids": [6]},
        {
            "chosen": [{"role": "user", "content": "gen 6"}, {"role": "assistant", "content": "x"}],
            "rejected": [{"role": "user", "content": "gen 6"}, {"role": "assistant", "content": "y"}],
        },
    ]
    mixed = mix_replay(generated, offline, ratio=0.5, seed=0)
    assert len(mixed) == 20
    assert sum(any(m is g for g in generated) for m in mixed) == 10  # every generated pair, once
    from_offline = [m for m in mixed if not any(m is g for g in generated)]
    assert len(from_offline) == 10 and all(str(m["prompt"]).startswith("offline") for m in from_offline)
    assert mix_replay(generated, offline, ratio=0.5, seed=0) == mixed
    assert mix_replay(generated, offline, ratio=0.5, seed=1) != mixed
    assert len(mix_replay(generated, offline, ratio=0.25)) == 10 + 3  # 10 * 0.25 / 0.75 = 3.33
    assert mix_replay(generated, offline, ratio=0.0, seed=5) != generated  # shuffled...
    assert sorted(map(id, mix_replay(generated, offline, ratio=0.0))) == sorted(map(id, generated))  # ...only


def test_mix_replay_with_too_few_offline_pairs_warns_and_uses_all():
    generated = [_offline(i, f"gen {i}") for i in range(10)]
    offline = [_offline(i) for i in range(4)] + [_offline(0, "gen 1")]
    with pytest.warns(UserWarning, match="only 4"):
        mixed = mix_replay(generated, offline, ratio=0.5)
    assert len(mixed) == 14


def test_mix_replay_bad_arguments():
    for bad in (1.0, -0.1, "half"):
        with pytest.raises(ValueError, match="ratio"):
            mix_replay([], [], ratio=bad)
    with pytest.raises(ValueError, match=r"offline_pairs\[1\] has no prompt"):
        mix_replay([], [_offline(0), {"chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match="generated_pairs"):
        mix_replay("pairs.jsonl", [])


def test_auto_alpha_takes_the_smallest_of_equal_minimizers():
    # A: shaped gap 1 - 5 alpha, a tie (<= 0.5) for alpha in [0.1, 0.3]: the grid holds 0.15 and
    # 0.25 there (split by A's swap point 0.2), both with mean length gap 0 (only B is kept).
    groups = [group("A", [10, 5], [1.0, 0.0]), group("B", [8, 8], [1.0, 0.0])]
    pairs, st = build_pairs(groups, length_alpha="auto", min_score_gap=0.5)
    assert st.length_alpha_grid == 4
    assert st.length_alpha == pytest.approx(0.15)
    assert [p["prompt"] for p in pairs] == ["B"] and st.mean_length_gap == 0
    _, raw = build_pairs(groups, min_score_gap=0.5)
    assert raw.mean_length_gap == 2.5
