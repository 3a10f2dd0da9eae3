"""``lrdpo-fast demo --compare``: each objective's run config, the table, the refusals, the sweep's
picks as the defaults, and a reduced run through the real CLI (2 methods x 1 iteration, vLLM, the
judge, the fused-kernel Trainer).

A ``--compare`` that trains one method with another's config shows it here: the run directory's
recorded ``train:`` section, SimPO's pairs without a reference, WPO's pair weights in its metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrdpo_fast.cli import main as cli_main
from lrdpo_fast.cli.demo_compare import METHODS, compare_table, method_config, parse_methods
from lrdpo_fast.cli.demo_setup import QUICK, run_config
from lrdpo_fast.cli.demo_sweep import CANDIDATES, candidate_tag, disagreements, picks, sweep_methods, sweep_table
from lrdpo_fast.loop.config import IterateConfig

REPO = Path(__file__).resolve().parents[1]


def _rows(acc: list[float], length: list[float]) -> list[dict]:
    return [
        {
            "iteration": i,
            "true_accuracy": a,
            "mean_response_length": n,
            "judge_reward": 0.9 + 0.01 * i,
            "lc_win_rate": None if i == 0 else 0.5 + 0.01 * i,
        }
        for i, (a, n) in enumerate(zip(acc, length))
    ]


def test_each_method_is_the_demo_run_with_its_own_train_keys(tmp_path):
    """Every method's config builds (an IterateConfig checks it: SamPO without live_reference
    would be refused), differs from the demo's run only in ``train:`` and holds its own keys."""
    base = run_config(QUICK, 0.0, tmp_path / "x", 0)
    assert list(METHODS) == ["dpo", "lr_dpo", "ln_dpo", "simpo", "ld_dpo", "sampo", "wpo"]
    seen = set()
    for name, method in METHODS.items():
        cfg = method_config(QUICK, method, tmp_path / "x", 0)
        assert {k: v for k, v in cfg.items() if k != "train"} == {k: v for k, v in base.items() if k != "train"}
        train = IterateConfig.from_dict(cfg).train
        for key, value in method.train.items():
            assert getattr(train, key) == value, (name, key)
        seen.add(tuple(sorted(method.train.items())))
    assert len(seen) == len(METHODS)  # no two methods train alike
    want = {
        "lr_dpo": ("alpha", 0.0),
        "ln_dpo": ("loss_type", "sigmoid"),
        "simpo": ("loss_type", "sigmoid"),
        "ld_dpo": ("ld_alpha", None),
        "sampo": ("sampo", False),
        "wpo": ("wpo", False),
    }
    for name, (key, plain) in want.items():  # plain: DPO's value
        assert getattr(IterateConfig.from_dict(method_config(QUICK, METHODS[name], tmp_path, 0)).train, key) != plain


def test_compare_table_lines_and_columns():
    runs = {"dpo": _rows([0.8, 0.85, 0.87], [27.0, 30.5, 35.25]), "wpo": _rows([0.8, 0.84, 0.9], [27.0, 26.0, 25.5])}
    text = compare_table(runs, lambda n: METHODS[n].label)
    lines = text.splitlines()
    for title in ("true accuracy", "length (tokens)", "judge reward", "LC win rate vs start"):
        assert title in lines[0]
    # the start's LC win rate (none) has no column: 3 + 3 + 3 + 2 iterations
    assert lines[1].split() == ["method", *"012", *"012", *"012", *"12"]
    assert lines[2].split() == ["DPO", "0.800", "0.850", "0.870", "27.0", "30.5", "35.2", "0.900", "0.910", "0.920"] + [
        "0.510",
        "0.520",
    ]
    assert lines[3].split()[:4] == ["WPO", "0.800", "0.840", "0.900"]
    assert "WPO: length -6%, true accuracy 0.800 -> 0.900 after 2 iterations" in text
    # every title starts over its first column
    assert lines[0].index("length (tokens)") == lines[2].index("27.0")
    assert len(lines[0]) == len(lines[2])  # the longest title widens its columns to fit


def test_parse_methods():
    assert list(parse_methods(None)) == list(METHODS)
    assert list(parse_methods("wpo, dpo")) == ["wpo", "dpo"]
    for bad in ("dpo,rdpo", "", "dpo,dpo"):
        with pytest.raises(ValueError, match="--methods"):
            parse_methods(bad)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--compare", "--dice"], "--compare and --dice"),
        (["--compare", "--alpha", "0.1"], "--alpha"),
        (["--compare", "--methods", "dpo,nope"], "--methods must name"),
        (["--methods", "dpo"], "needs --compare"),
    ],
)
def test_bad_flag_combinations_refused_in_one_line(args, says, capsys, tmp_path):
    # --threads 0 would be refused next: a combination let through fails fast, never runs a demo
    assert cli_main(["demo", "--quick", "--threads", "0", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrdpo-fast: error: ") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_the_defaults_are_the_sweep_s_picks():
    """The committed sweep table (docs/sweep_compare.md, written by scripts/sweep_compare.py) picks
    exactly the values ``METHODS`` holds, and every default is one of the sweep's candidates."""
    table = (REPO / "docs" / "sweep_compare.md").read_text(encoding="utf-8")
    picked = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[-1] == "**yes**":
            label, tag = cells[0], cells[1]
            picked[next(n for n, m in METHODS.items() if m.label == label)] = tag
    assert sorted(picked) == sorted(METHODS)
    for name, values in CANDIDATES.items():
        held = {k: METHODS[name].train.get(k) for k in values[0]}
        assert held in values, name
        assert picked[name] == candidate_tag(held), name


def test_sweep_picks_and_table():
    plan = sweep_methods(["dpo", "simpo"])
    assert [n for n in plan] == [f"{m}__{candidate_tag(v)}" for m in ("dpo", "simpo") for v in CANDIDATES[m]]
    assert all(m.train["loss_type"] == "simpo" for n, (_, _, m) in plan.items() if n.startswith("simpo"))
    finals = [0.88, 0.88, 0.90, 0.85, 0.89, 0.90]  # dpo: a tie, the first listed; simpo: the first of a tie
    assert len(plan) == len(finals)
    runs = {run: _rows([0.8, acc], [27.0, 30.0]) for run, acc in zip(plan, finals)}
    got = picks(runs, plan)
    assert got == {"dpo": list(plan)[0], "simpo": list(plan)[2]}
    table = sweep_table(runs, plan)
    row = "| SimPO | learning_rate=5e-05,gamma=1.25 | 0.800 → 0.900 | 27.0 → 30.0 |"
    assert table.count("**yes**") == 2 and row in table
    # dpo's pick (5e-5) is not what METHODS holds (1e-4): said by name; simpo's is
    lines = disagreements(runs, plan)
    assert [line.split(":")[0] for line in lines] == ["dpo"] and "learning_rate=5e-05" in lines[0]


@pytest.mark.slow
def test_compare_through_the_cli(tmp_path):
    """``lrdpo-fast demo --compare --quick --iterations 1 --methods simpo,wpo``: the table, the plot,
    ``compare.json`` and a run directory per method trained with that method's own objective."""
    pytest.importorskip("vllm")
    out = tmp_path / "cmp"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("TRITON_INTERPRET", None)
    argv = ["demo", "--compare", "--quick", "--iterations", "1", "--methods", "simpo,wpo", "--out", str(out)]
    res = subprocess.run([sys.executable, "-m", "lrdpo_fast.cli", *argv], capture_output=True, text=True, env=env)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    record = json.loads((out / "compare.json").read_text())
    runs = record["runs"]
    assert list(runs) == ["simpo", "wpo"] and record["methods"]["wpo"]["train"] == dict(METHODS["wpo"].train)
    for name, rows in runs.items():
        run_dir = out / name
        assert [r["iteration"] for r in rows] == [0, 1]
        recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["config"]["train"]
        want = method_config(QUICK, METHODS[name], run_dir, 0)["train"]
        assert {k: recorded[k] for k in want} == want, name
        assert (run_dir / "iter_0" / "policy").is_dir() and (run_dir / "summary.jsonl").is_file()
        row = rows[1]
        line = next(x for x in res.stdout.splitlines() if x.startswith(METHODS[name].label + " "))
        assert re.findall(r"\d+\.\d+", line)[:2] == [f"{rows[0]['true_accuracy']:.3f}", f"{row['true_accuracy']:.3f}"]
        assert f"{row['mean_response_length']:.1f}" in line and f"{row['lc_win_rate']:.3f}" in line
    # the start policy's evaluation is shared: row 0 is the same for both
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time_") and not k.endswith("_per_s")}  # noqa: E731
    assert strip(runs["simpo"][0]) == strip(runs["wpo"][0])
    # each trained its own objective: SimPO without a reference, WPO with its pair weights
    simpo_pairs = [json.loads(x) for x in (out / "simpo/iter_0/pairs.jsonl").read_text().splitlines()]
    assert simpo_pairs and all("ref_chosen_logps" not in p for p in simpo_pairs)
    wpo_pairs = [json.loads(x) for x in (out / "wpo/iter_0/pairs.jsonl").read_text().splitlines()]
    assert all("ref_chosen_logps" in p for p in wpo_pairs)
    metrics = [json.loads(x) for x in (out / "wpo/iter_0/train/metrics.jsonl").read_text().splitlines()]
    weights = [m["wpo/weight"] for m in metrics if "loss" in m]
    assert weights and all(0 < w < float("inf") for w in weights) and len(set(weights)) > 1
    simpo_metrics = [json.loads(x) for x in (out / "simpo/iter_0/train/metrics.jsonl").read_text().splitlines()]
    assert not any("wpo/weight" in m for m in simpo_metrics)
