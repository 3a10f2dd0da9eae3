"""The CLI: the embedded example end to end (2 steps), config files, errors."""

from __future__ import annotations

import json

from lrdpo_fast import cli


def test_example_two_steps(tmp_path, capsys):
    out = tmp_path / "ex"
    assert cli.main(["train", "--example", "--max-steps", "2", "--output-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "done: 2 steps" in printed and "reward acc" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["length/rejected"] > rows[0]["length/chosen"]  # the example's rejected answers are padded
    ckpt = out / "checkpoint-2"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    assert (out / "training_curves.png").is_file()


def test_config_file_with_relative_paths_and_resume(tmp_path, capsys):
    from lrdpo_fast.examples import PAIRS_PATH

    lines = PAIRS_PATH.read_text().splitlines()[:6]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "cfg.yaml").write_text(
        "model: example\ntokenizer: example\ndata: pairs.jsonl\n"
        "alpha: 0.02\nlearning_rate: 1.0e-3\npairs_per_step: 3\nmax_steps: 2\nsave_steps: 1\n"
        f"output_dir: {tmp_path / 'run'}\nplot: false\nprogress: false\n"
    )
    assert cli.main(["train", str(tmp_path / "cfg.yaml")]) == 0
    assert cli.main(["train", str(tmp_path / "cfg.yaml"), "--max-steps", "3", "--resume"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_bad_config_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text("model: example\ndata: example\nbetaa: 0.1\n")
    assert cli.main(["train", str(tmp_path / "cfg.yaml")]) == 2
    assert "betaa" in capsys.readouterr().err
    assert cli.main(["train"]) == 2  # neither CONFIG nor --example: one error line, no traceback
    assert "exactly one" in capsys.readouterr().err


def test_module_entry_point():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "lrdpo_fast", "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--example" in proc.stdout


def test_demo_bad_arguments_are_one_line_errors(tmp_path, capsys):
    """Checked before anything starts (no engine, no folder, the process's thread count untouched)."""
    import torch

    threads = torch.get_num_threads()
    for args, name in (
        (["--alpha", "0"], "--alpha"),
        (["--alpha", "-0.1"], "--alpha"),
        (["--alpha", "nan"], "--alpha"),
        (["--iterations", "0"], "--iterations"),
        (["--threads", "0"], "--threads"),
        (["--seed", "-1"], "--seed"),
    ):
        assert cli.main(["demo", "--quick", "--out", str(tmp_path / "d"), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err and "Traceback" not in err, err
    assert not (tmp_path / "d").exists() and torch.get_num_threads() == threads
