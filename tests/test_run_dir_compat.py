"""A run directory written by an earlier version resumes after a change of the code.

``tests/data/run_dir_v1/run`` was made at commit 491a252 (before the loop/ redesign) by
``make_fixture.py`` in that folder: the config below, stopped after iteration 0's pairs phase
(samples, scores, pairs with reference log-probs, the evaluation of row 0). ``expected_summary.jsonl``
is what the same commit wrote for the whole 2-iteration run. Resuming the old folder with today's
code must accept its config.yaml, keep its completed phases, and end with the same summary.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

DATA = Path(__file__).parent / "data" / "run_dir_v1"
# wall-clock fields differ between any two runs
TIMING = ("time_", "_per_s")
# summary columns renamed since: the pairs' shaping alpha was called length_alpha beside train.alpha
RENAMED = {"length_alpha": "pairs_length_alpha"}


def _stable(row: dict) -> dict:
    return {RENAMED.get(k, k): v for k, v in row.items() if not any(t in k for t in TIMING)}


@pytest.mark.slow
def test_run_dir_made_before_the_redesign_resumes_identically(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import lrdpo_fast as lf

    sys.path.insert(0, str(DATA))
    try:
        from make_fixture import CFG
    finally:
        sys.path.remove(str(DATA))
    run = tmp_path / "run"
    shutil.copytree(DATA / "run", run)
    # the folder was made elsewhere and its config records absolute paths: point it here
    record = yaml.safe_load((run / "config.yaml").read_text())
    record["config"]["run_dir"] = str(run)
    (run / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    before = {p: p.read_bytes() for p in (run / "iter_0").rglob("*") if p.is_file()}

    rows = lf.iterate(lf.IterateConfig.from_dict({**CFG, "run_dir": str(run)}), progress=False)

    for p, data in before.items():  # the completed phases were kept, not redone
        assert p.read_bytes() == data, p
    expected = [json.loads(line) for line in (DATA / "expected_summary.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected) == 3
    for got, want in zip(rows, expected):
        got, want = _stable(got), _stable(want)
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert got[k] == (pytest.approx(v, rel=1e-6, abs=1e-9) if isinstance(v, float) else v), k
