"""What happens to a run directory's files between runs: damaged outputs are redone (or refused
by name), a moved or copied run resumes and extends, a run's own config.yaml continues it, and a
write the file system refuses (a real RLIMIT_FSIZE in the child) ends the run in one line,
leaving nothing marked complete; the same command then finishes identically."""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from loop_runs import _cli, _outputs, _write_run  # noqa: E402

EAGER = ", enforce_eager: true, cpu_threads: 1"
WALL = ("time_", "_per_s", "wall_s")


def _stable_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "summary.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(w in k for w in WALL)} for r in rows]


def _run_yaml(folder: Path, model_dir: Path, iterations: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return _write_run(folder, model_dir, iterations=iterations, eval_section=False, sampler_extra=EAGER)


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_model_dir):
    """An uninterrupted 2-iteration run: what every damaged-and-resumed run must end as."""
    folder = tmp_path_factory.mktemp("clean")
    proc = _cli(_run_yaml(folder, tiny_model_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "run"


@pytest.mark.slow
def test_damaged_outputs_are_redone_and_the_run_ends_identically(tmp_path, tiny_model_dir, clean_run):
    cfg = _run_yaml(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    proc = _cli(cfg, args=["pairs", "--iteration", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _cut(run / "iter_1/pairs.jsonl")  # a complete phase's output, which the train phase reads
    _cut(run / "iter_0/policy/model.safetensors")  # the policy the resume starts from
    proc = _cli(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if line.startswith("lrdpo-fast: ")]
    assert any("iter_0/policy/model.safetensors" in n and "redoing iteration 0's train phase" in n for n in notes)
    assert any("iter_1/pairs.jsonl" in n and "redoing iteration 1's pairs phase" in n for n in notes)
    want, got = _outputs(clean_run), _outputs(run)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    assert _stable_rows(run) == _stable_rows(clean_run)


@pytest.mark.slow
def test_a_moved_run_resumes_and_extends_and_a_changed_input_is_refused(tmp_path, tiny_model_dir, clean_run):
    moved = tmp_path / "elsewhere"
    shutil.copytree(clean_run.parent, moved)  # the project folder: YAML, prompts, run directory
    cfg = moved / "run.yaml"
    proc = _cli(cfg, args=["--iterations", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _stable_rows(moved / "run")
    clean = _stable_rows(clean_run)
    # rows 0-2 as before (row 2 now also carries iteration 2's sampling, which the clean run lacked)
    assert len(rows) == 4 and rows[:2] == clean[:2] and clean[2].items() <= rows[2].items()
    # the run's own config.yaml continues it where it lies (as for a run `lrdpo-fast demo` made)
    proc = _cli(moved / "run" / "config.yaml", args=["--iterations", "4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_stable_rows(moved / "run")) == 5
    # an input whose content changed is not the run's input: one line naming it
    prompts = moved / "prompts.jsonl"
    prompts.write_text(prompts.read_text().replace("fox 1 ", "cat 1 "))
    proc = _cli(cfg, args=["--iterations", "5"])
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "prompts.jsonl" in err[0] and "is not the input the run started from" in err[0], err


def _file_size_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_refused_write_ends_in_one_line_and_the_same_command_finishes(tmp_path, tiny_model_dir, clean_run):
    cfg = _run_yaml(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    # 200 kB: the samples, scores and pairs fit; the first checkpoint's weights (462 kB) do not
    proc = _cli(cfg, preexec_fn=_file_size_limit(200_000))
    assert proc.returncode == 2, proc.stderr[-3000:]
    # the run's own progress output comes before it; the failure itself is one line, no traceback
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lrdpo-fast: error:")]
    assert len(errors) == 1 and errors[0].startswith("lrdpo-fast: error: could not write"), proc.stderr[-3000:]
    assert "File too large" in errors[0] and "checkpoint-" in errors[0], errors
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == errors[0]
    assert run.joinpath("iter_0/done/pairs.json").is_file() and not run.joinpath("iter_0/done/train.json").exists()
    assert not list(run.rglob("*.partial")) and not list(run.rglob("*.tmp"))  # nothing half-written kept
    proc = _cli(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = _outputs(clean_run), _outputs(run)
    for name in want:
        assert got[name] == want[name], name
