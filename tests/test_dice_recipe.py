"""The shipped DICE recipe (examples/dice/) through the CLI on the CPU, at a reduced size: round 0
scored by the judge, then two implicit-reward rounds with length shaping and replay, which resume
identically after a kill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from loop_runs import _cli, _outputs  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "dice"
SMALL = [
    "--set",
    "prompts_per_iteration=24",
    "--set",
    "sampler.n=4",
    "--set",
    "sampler.max_new_tokens=40",
    "--set",
    "eval.num_prompts=12",
    "--set",
    "train.pairs_per_step=8",
]


def _recipe(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("round0.yaml", "rounds.yaml"):
        shutil.copyfile(RECIPE / name, folder / name)
    return folder


@pytest.mark.slow
def test_the_dice_recipe_runs_and_resumes_identically(tmp_path):
    ref = _recipe(tmp_path / "ref")
    proc = _cli(ref / "round0.yaml", args=SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _cli(ref / "rounds.yaml", args=SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = ref / "runs" / "rounds"
    rows = [json.loads(x) for x in (rounds / "summary.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("true_accuracy" in r for r in rows)
    for i in range(2):
        pairs = [json.loads(x) for x in (rounds / f"iter_{i}/pairs.jsonl").read_text().splitlines()]
        origins = {p["origin"] for p in pairs}
        assert origins == {"generated", "replay"}, origins
        stats = json.loads((rounds / f"iter_{i}/pairs_stats.json").read_text())
        assert stats["length_alpha_auto"] and stats["length_alpha_grid"] >= 1
        score = json.loads((rounds / f"iter_{i}/done/score.json").read_text())
        want = None if i == 0 else str((ref / "runs/round0/iter_0/policy").resolve())
        assert score["implicit_reference"] == want  # round 1's own: reward.reference; then policy_{i-1}

    # the same recipe killed mid-training of the implicit rounds, then the same command again
    kill = tmp_path / "kill"
    shutil.copytree(ref, kill, ignore=shutil.ignore_patterns("rounds"))
    proc = _cli(kill / "rounds.yaml", args=SMALL, env_extra={"LRDPO_FAULT": "train_step@2"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    proc = _cli(kill / "rounds.yaml", args=SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = _outputs(rounds), _outputs(kill / "runs" / "rounds")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
