"""Issue 27: the loop's fixed costs. ``enforce_eager: auto`` picks as documented (the measurement
is a plain argument), a run directory keeps its engine mode across resumes, and
``train.reference: sampler`` equals the recomputed reference or is refused with a clear error."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from loop_runs import _cli, _outputs, _write_run

from lrdpo_fast.data.records import PairExample
from lrdpo_fast.loop import engine_mode
from lrdpo_fast.loop.config import IterateConfig
from lrdpo_fast.loop.run_dir import RunDir
from lrdpo_fast.loop.sampler import eager
from lrdpo_fast.loop.sampler.eager import EagerInputs, choose_enforce_eager
from lrdpo_fast.loop.sampler_reference import (
    MISMATCH_TOLERANCE,
    ReferenceMismatchError,
    attach_sampler_reference,
    check_distribution,
    sampler_sums,
)
from lrdpo_fast.train.config import TrainConfig

M20 = 19_500_000


# ---- enforce_eager: auto ---------------------------------------------------------------------------------
def test_auto_compiles_on_cuda_whatever_the_size():
    assert choose_enforce_eager(EagerInputs("cuda", M20, 100, False))[0] is False
    assert choose_enforce_eager(EagerInputs("cuda", M20, None, False))[0] is False


STUB = eager.CompileCosts(compile_s=20.0, warm_compile_s=8.0, speedup=1.5, eager_s_per_token_per_param=1e-3 / M20)


def test_auto_on_cpu_weighs_the_compile_cost_against_the_decoding_it_saves():
    # a stubbed measurement: compiling costs 20 s (8 s warm) and decodes 1.5x faster, 1 ms a token
    per_token = 1e-3 * (1 - 1 / 1.5)
    cold, warm = int(20.0 / per_token), int(8.0 / per_token)
    eager_now, why = choose_enforce_eager(EagerInputs("cpu", M20, cold - 10, False), STUB)
    assert eager_now is True and "19.5M parameters" in why and "cold cache" in why and "~20 s" in why
    assert choose_enforce_eager(EagerInputs("cpu", M20, cold + 10, False), STUB)[0] is False
    # a warm compile cache moves the break-even down; a 10x larger model reaches it 10x sooner
    assert choose_enforce_eager(EagerInputs("cpu", M20, warm + 10, True), STUB) == (
        False,
        f"CPU, 19.5M parameters, {warm + 10} tokens: compiling would cost ~8 s (warm cache) and save ~8 s of decoding",
    )
    assert choose_enforce_eager(EagerInputs("cpu", M20, warm + 10, False), STUB)[0] is True
    assert choose_enforce_eager(EagerInputs("cpu", 10 * M20, cold // 10 + 10, False), STUB)[0] is False
    assert choose_enforce_eager(EagerInputs("cpu", M20, None, False), STUB)[0] is True  # nothing to weigh


def test_auto_with_the_measured_cpu_costs_starts_eager_at_the_issue_setting():
    # 3 iterations x 64 prompts x 4 x 64 tokens on the 20M Llama (and 100x that): compiling does not pay
    for tokens in (eager.run_tokens(64, 4, 64, 3), 100 * eager.run_tokens(64, 4, 64, 3)):
        assert choose_enforce_eager(EagerInputs("cpu", M20, tokens, True))[0] is True


def test_compile_cache_index_is_a_note_of_compiled_starts(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vcache"))
    key = eager.compile_cache_key(str(tiny_model_dir), "float32", 256)
    assert not eager.cache_warm(key)
    eager.note_compiled(key)
    eager.note_compiled(key)
    assert eager.cache_warm(key) and not eager.cache_warm(eager.compile_cache_key(str(tiny_model_dir), "float32", 128))
    assert len(json.loads((tmp_path / "vcache/lrdpo_fast_compiled.json").read_text())) == 1


def _cfg(tmp_path, **sampler):
    return IterateConfig.from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "reward": {"callable": "loop_rules:score"},
            "sampler": {"dtype": "float32", **sampler},
        }
    )


def test_engine_mode_is_recorded_and_reused_on_resume(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path)
    run = RunDir(tmp_path / "run")
    eager_now, why = engine_mode.decide(cfg, run, str(tiny_model_dir), 1000)
    assert eager_now is True and "CPU" in why
    run.root.mkdir(parents=True)
    (run.root / engine_mode.RECORD).write_text(json.dumps({"enforce_eager": False, "why": "x"}))
    assert engine_mode.decide(cfg, run, str(tiny_model_dir), 1000) == (False, "as this run directory started")
    assert engine_mode.decide(_cfg(tmp_path, enforce_eager=True), run, str(tiny_model_dir), 1000)[0] is True
    # a run directory from before 'auto': its config.yaml's bool
    (run.root / engine_mode.RECORD).unlink()
    old = {"run_format": 1, "config": {"sampler": {"enforce_eager": False}}}
    run.config_path.write_text(yaml.safe_dump(old))
    assert engine_mode.decide(cfg, run, str(tiny_model_dir), 1000) == (False, "as this run directory started")


def test_enforce_eager_values():
    assert _cfg_values("auto").sampler.engine.enforce_eager == "auto"
    assert _cfg_values(True).sampler.engine.enforce_eager is True
    with pytest.raises(ValueError, match=r"sampler.enforce_eager must be a bool \(true or false\) or auto"):
        _cfg_values("sometimes")


def _cfg_values(value):
    return IterateConfig.from_dict({"reward": {"callable": "m:f"}, "sampler": {"enforce_eager": value}})


# ---- train.reference: sampler -------------------------------------------------------------------------
def test_sampler_reference_refused_where_it_cannot_match():
    check_distribution("raw_logprobs", 0.7, 0.9)  # vLLM's raw log-probs: the model's own distribution
    check_distribution("processed_logprobs", 1.0, 1.0)
    with pytest.raises(ValueError, match=r"temperature=0.7.*changed from policy_i's distribution"):
        check_distribution("processed_logprobs", 0.7, 1.0)
    with pytest.raises(ValueError, match=r"top_p=0.9"):
        check_distribution("processed_logprobs", 1.0, 0.9)
    with pytest.raises(ValueError, match="needs the engine's log-probs"):
        check_distribution("raw_logits", 1.0, 1.0)
    for bad, why in (
        ({"loss_type": "simpo"}, "has no reference"),
        ({"live_reference": True}, "live_reference"),
        ({"ld_alpha": 0.5}, "ld_alpha"),
    ):
        with pytest.raises(ValueError, match=f"reference='sampler' cannot be used: .*{why}"):
            TrainConfig(reference="sampler", **bad)
    with pytest.raises(ValueError, match="reference must be one of"):
        TrainConfig(reference="engine")
    with pytest.raises(ValueError, match=r"train.reference 'sampler' needs sampler.dtype: float32 \(got 'auto'\)"):
        IterateConfig.from_dict({"reward": {"callable": "m:f"}, "train": {"reference": "sampler"}})


def _examples():
    return [PairExample([1, 2], [3, 4], [5], 0) for _ in range(6)]


def test_attach_uses_the_engine_sums_recomputes_the_rest_and_measures_the_mismatch():
    calls = []

    def recompute(exs):
        calls.append(len(exs))
        return [dataclasses.replace(ex, ref_chosen_logps=-1.0, ref_rejected_logps=-2.0) for ex in exs]

    sums = [(-1.0 + 1e-4, -2.0), None, (-1.0, -2.0), (-1.0, -2.0), (-1.0, -2.0), (-1.0, -2.0)]
    out, info = attach_sampler_reference(_examples(), sums, recompute, spot_check=2)
    assert calls == [3]  # pair 1 (not covered) + the spot check of pairs 0 and 2
    assert [ex.ref_chosen_logps for ex in out] == [-1.0 + 1e-4, -1.0, -1.0, -1.0, -1.0, -1.0]
    assert info["reference_recomputed_pairs"] == 1 and info["reference_checked_pairs"] == 2
    assert info["reference_mismatch_max"] == pytest.approx(1e-4)
    bad = [(-1.0 - 2 * MISMATCH_TOLERANCE, -2.0)] + sums[1:]
    with pytest.raises(ReferenceMismatchError, match="differ from the recomputed reference"):
        attach_sampler_reference(_examples(), bad, recompute, spot_check=2)


@pytest.mark.slow
def test_sampler_reference_equals_the_recomputed_one_and_resumes_identically(tmp_path, tiny_model_dir):
    dirs = {k: tmp_path / k for k in ("recompute", "sampler", "kill")}
    for d in dirs.values():
        d.mkdir()
    extra = {"recompute": "", "sampler": ", reference: sampler", "kill": ", reference: sampler"}
    cfgs = {k: _write_run(d, tiny_model_dir, eval_section=False, train_extra=extra[k]) for k, d in dirs.items()}
    for k in ("recompute", "sampler"):
        done = _cli(cfgs[k])
        assert done.returncode == 0, done.stderr[-3000:]
    assert "sampler.enforce_eager=True" in done.stderr
    rec = [json.loads(x) for x in (dirs["recompute"] / "run/iter_0/pairs.jsonl").read_text().splitlines()]
    smp = [json.loads(x) for x in (dirs["sampler"] / "run/iter_0/pairs.jsonl").read_text().splitlines()]
    assert [r["chosen_input_ids"] for r in rec] == [r["chosen_input_ids"] for r in smp]
    for a, b in zip(rec, smp):
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            assert abs(a[key] - b[key]) < 1e-3, (key, a[key], b[key])
    rows = [json.loads(x) for x in (dirs["sampler"] / "run/summary.jsonl").read_text().splitlines()]
    assert all(0 <= r["reference_mismatch_max"] < 1e-3 for r in rows[1:])
    for fault in ("sample", "train_step@2"):
        proc = _cli(cfgs["kill"], {"LRDPO_FAULT": fault})
        assert proc.returncode == -9, (fault, proc.returncode, proc.stderr[-3000:])
    proc = _cli(cfgs["kill"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = _outputs(dirs["sampler"] / "run"), _outputs(dirs["kill"] / "run")
    assert sorted(got) == sorted(want) and len(want) == 2 * 5
    for name in want:
        assert got[name] == want[name], name


def test_sampler_sums_only_where_the_trained_tokens_are_the_sampled_ones():
    from lrdpo_fast.loop.pairs import ScoredGroup
    from lrdpo_fast.loop.samples import Sample

    def sample(ids, lps, reason="stop"):
        return Sample([1, 7], ids, "t", reason, reason == "length", lps)

    group = ScoredGroup("p", [sample([3, 2], [-0.5, -0.25]), sample([4, 5], [-1.0, -2.0], "length")], [1.0, 0.0])
    rec = {"prompt_index": 0, "chosen_input_ids": [3, 2], "rejected_input_ids": [4, 5]}
    same = PairExample([1, 7], [3, 2], [4, 5])
    assert sampler_sums([group], [rec], [same]) == [(-0.75, -3.0)]
    # the loader's EOS after a response (2 = EOS) that the engine did not sample, a cut prompt
    for ex in (PairExample([1, 7], [3, 2], [4, 5, 2]), PairExample([7], [3, 2], [4, 5])):
        assert sampler_sums([group], [rec], [ex]) == [None]
    no_lps = ScoredGroup("p", [sample([3, 2], None), sample([4, 5], [-1.0, -2.0], "length")], [1.0, 0.0])
    assert sampler_sums([no_lps], [rec], [same]) == [None]
