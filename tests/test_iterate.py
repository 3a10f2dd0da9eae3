"""The iterative loop end to end on a tiny saved Llama with a rule reward and a real vLLM engine:
run directory, summary, reference log-probs against a float64 reference, the in-memory weight
sync, and kill-at-any-point resume compared byte for byte with an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from loop_runs import TESTS, _cli, _float64_logps, _outputs, _write_run  # noqa: E402,F401

from lrdpo_fast.loop.config import IterateConfig  # noqa: E402
from lrdpo_fast.loop.iterate import iterate  # noqa: E402


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A 2-iteration run through the CLI, in a process of its own: a second in-process engine
    closing would tear down vLLM state the session's shared engine relies on."""
    tmp = tmp_path_factory.mktemp("iterate")
    proc = _cli(_write_run(tmp, tiny_model_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp / "run/summary.jsonl").read_text().splitlines()]
    return tmp / "run", rows


def test_config_errors_name_the_key(tmp_path, tiny_model_dir):
    cfg = _write_run(tmp_path, tiny_model_dir)
    with pytest.raises(ValueError, match="sampler.n must be an int >= 2"):
        IterateConfig.from_yaml(cfg, **{"sampler.n": 1})
    with pytest.raises(ValueError, match="unknown key"):
        IterateConfig.from_yaml(cfg, **{"pairs.bogus": 1})
    run = IterateConfig.from_yaml(cfg)
    assert Path(run.run_dir).is_absolute() and Path(run.prompts).is_file()
    with pytest.raises(ValueError, match="cfg must be an IterateConfig"):
        iterate({"policy": "x"})


def test_run_directory_and_summary(finished_run):
    run, rows = finished_run
    for i in range(2):
        for name in (
            "samples.jsonl",
            "scores.jsonl",
            "pairs.jsonl",
            "pairs_stats.json",
            "train/metrics.jsonl",
            "policy/model.safetensors",
            "policy/tokenizer.json",
        ):
            assert (run / f"iter_{i}" / name).exists(), name
    assert (run / "config.yaml").is_file() and (run / "report.png").stat().st_size > 1000
    summary = [json.loads(line) for line in (run / "summary.jsonl").read_text().splitlines()]
    assert summary == json.loads(json.dumps(rows))
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all("mean_response_length" in r and "mean_chars" in r and "judge_reward" in r for r in rows)
    assert rows[1]["pairs_kept"] >= 1 and rows[1]["loss"] is not None and "win_rate" in rows[1]
    samples = [json.loads(line) for line in (run / "iter_0/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 4 and {s["sample_index"] for s in samples} == {0, 1, 2, 3}


def test_pairs_reference_is_previous_policy(finished_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    run, _ = finished_run
    for i, folder in enumerate([tiny_model_dir, run / "iter_0/policy"]):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        pairs = [json.loads(line) for line in (run / f"iter_{i}/pairs.jsonl").read_text().splitlines()]
        for rec in pairs[:3]:
            for side in ("chosen", "rejected"):
                ids = rec[f"{side}_input_ids"]
                # an EOS is scored after a response that did not sample one, unless it was truncated
                eos = [] if ids[-1] == 2 or rec[f"{side}_truncated"] else [2]
                want = _float64_logps(model, rec["prompt_input_ids"], ids + eos)
                assert rec[f"ref_{side}_logps"] == pytest.approx(want, abs=2e-4), (i, side)


def test_training_used_the_length_term(finished_run):
    """Iteration 0's first training row equals the LR-DPO loss recomputed from pairs.jsonl with alpha
    (and lengths with the appended EOS only where a response neither sampled one nor was truncated)."""
    import torch.nn.functional as F

    run, _ = finished_run
    pairs = [json.loads(line) for line in (run / "iter_0/pairs.jsonl").read_text().splitlines()]
    first = json.loads((run / "iter_0/train/metrics.jsonl").read_text().splitlines()[0])
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(3 * 1_000_003))[:2].tolist()
    losses = []
    for k in order:  # at step 1 the policy is the reference: the margin is alpha * (|w| - |l|) only
        p = pairs[k]
        lw, ll = p["chosen_length"], p["rejected_length"]
        lw += p["chosen_input_ids"][-1] != 2 and not p["chosen_truncated"]  # the appended EOS
        ll += p["rejected_input_ids"][-1] != 2 and not p["rejected_truncated"]
        losses.append(-F.logsigmoid(torch.tensor(0.05 * (lw - ll), dtype=torch.float64)))
    assert first["loss"] == pytest.approx(float(sum(losses) / len(losses)), abs=1e-5)


def test_sampler_got_the_new_weights(finished_run, vllm_sampler):
    """Iteration 1 sampled from policy_1: the same requests on another engine loaded with
    iter_0/policy give the same responses (they would not from policy_0)."""
    from helpers import tiny_model

    from lrdpo_fast.train.checkpoint import load_model_weights

    run, _ = finished_run
    recs = [json.loads(line) for line in (run / "iter_1/samples.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in recs if r["sample_index"] == 0]
    try:
        vllm_sampler.load_weights(load_model_weights(run / "iter_0/policy"))
        again = vllm_sampler.generate(prompts, n=4, temperature=1.0, max_new_tokens=10, seed=3 * 1_000_003 + 1)
    finally:
        vllm_sampler.load_weights(tiny_model("llama", seed=0))
    assert [s.response_ids for g in again for s in g] == [r["response_ids"] for r in recs]


ALL_FAULTS = ("sample", "score@2", "train_step@2", "before_rename@5")


@pytest.mark.slow
@pytest.mark.parametrize(
    "train_extra, faults",
    [
        ("", ALL_FAULTS),
        # LoRA: killed mid-training (the adapter and its optimizer state come back from the
        # checkpoint) and between a temp write and its rename
        (", lora: {r: 4, lora_alpha: 8}", ("train_step@2", "before_rename@5")),
    ],
    ids=["full", "lora"],
)
def test_kill_anywhere_and_resume_is_identical(tmp_path, tiny_model_dir, train_extra, faults):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    ref_dir.mkdir()
    kill_dir.mkdir()
    done = _cli(_write_run(ref_dir, tiny_model_dir, eval_section=False, train_extra=train_extra))
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = _write_run(kill_dir, tiny_model_dir, eval_section=False, train_extra=train_extra)
    # SIGKILL during sampling, scoring, training (after step 2 of iteration 0), and between a temp
    # write and its rename; each rerun of the same command continues where the last one died
    for fault in faults:
        proc = _cli(cfg, {"LRDPO_FAULT": fault})
        assert proc.returncode == -9, (fault, proc.returncode, proc.stderr[-3000:])
    proc = _cli(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = _outputs(ref_dir / "run"), _outputs(kill_dir / "run")
    assert sorted(got) == sorted(want) and len(want) == 2 * 5
    for name in want:
        assert got[name] == want[name], name
    rows_ref = [json.loads(x) for x in (ref_dir / "run/summary.jsonl").read_text().splitlines()]
    rows_kill = [json.loads(x) for x in (kill_dir / "run/summary.jsonl").read_text().splitlines()]
    wall = ("time_", "_per_s", "wall_s")
    strip = [{k: v for k, v in r.items() if not any(w in k for w in wall)} for r in rows_ref]
    assert [{k: v for k, v in r.items() if not any(w in k for w in wall)} for r in rows_kill] == strip
