"""DICE's experience replay inside the loop (``pairs.replay``): the offline share of each
iteration's pairs, never on a prompt the iteration generated pairs for, each pair's origin in
pairs.jsonl, the same pairs for the same seed, reference log-probs for every pair, and bad keys
named."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("vllm")

from loop_runs import _write_run  # noqa: E402

import lrdpo_fast as lf  # noqa: E402

EAGER = ", enforce_eager: true, cpu_threads: 1"


def _replay_run(folder, model_dir, ratio=0.5):
    folder.mkdir(parents=True, exist_ok=True)
    overlap = [{"prompt": f"the quick fox {i} says", "chosen": "e e e", "rejected": "x"} for i in range(10)]
    fresh = [{"prompt": f"an offline prompt {k}", "chosen": "yes e", "rejected": "no"} for k in range(12)]
    (folder / "offline.jsonl").write_text("".join(json.dumps(r) + "\n" for r in overlap + fresh))
    cfg = _write_run(folder, model_dir, iterations=1, eval_section=False, sampler_extra=EAGER)
    text = cfg.read_text().replace(
        "pairs: {strategy: best_worst, drop_truncated: false}",
        f"pairs: {{strategy: best_worst, drop_truncated: false, replay: {{pairs: offline.jsonl, ratio: {ratio}}}}}",
    )
    cfg.write_text(text)
    return cfg


@pytest.mark.slow
def test_replay_mixes_offline_pairs_on_new_prompts_only(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cfg = lf.IterateConfig.from_yaml(_replay_run(tmp_path / "a", tiny_model_dir))
    lf.iterate(cfg, progress=False, stop_after=(0, "pairs"))
    run = tmp_path / "a" / "run"
    pairs = [json.loads(x) for x in (run / "iter_0/pairs.jsonl").read_text().splitlines()]
    generated = [p for p in pairs if p["origin"] == "generated"]
    replayed = [p for p in pairs if p["origin"] == "replay"]
    assert generated and len(replayed) == len(generated)  # ratio 0.5: as many offline as generated
    gen_prompts = {p["prompt"] for p in generated}
    assert not gen_prompts & {p["prompt"] for p in replayed}  # never a prompt it generated pairs for
    assert all(isinstance(p["ref_chosen_logps"], float) for p in pairs)  # the reference covers both
    assert json.loads((run / "iter_0/done/pairs.json").read_text())["replay_pairs"] == len(replayed)
    # the same config and seed draw the same mix
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("run"))
    cfg_b = lf.IterateConfig.from_yaml(tmp_path / "b" / "run.yaml")
    lf.iterate(cfg_b, progress=False, stop_after=(0, "pairs"))
    assert (tmp_path / "b/run/iter_0/pairs.jsonl").read_bytes() == (run / "iter_0/pairs.jsonl").read_bytes()


@pytest.mark.parametrize(
    "replay, words",
    [
        ({"pairs": "x.jsonl", "ratio": 1.0}, "pairs.replay.ratio must be a float in [0, 1), got 1.0"),
        ({"ratio": 0.5}, "pairs.replay needs the key pairs"),
        ({"pairs": "x.jsonl", "share": 0.5}, "pairs.replay needs the key pairs (and optionally ratio)"),
        ("x.jsonl", "pairs.replay must be a mapping"),
    ],
)
def test_replay_keys_are_checked(replay, words):
    with pytest.raises(ValueError) as info:
        lf.IterateConfig.from_dict({"reward": {"callable": "a:b"}, "pairs": {"replay": replay}})
    assert words in str(info.value)


def _logp64(model, prompt_ids, response_ids) -> float:
    """Summed log-prob of ``response_ids`` after ``prompt_ids``, float64, materialized logits."""
    import torch

    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].log_softmax(-1)
    return float(logp.gather(-1, ids[0, 1:, None])[len(prompt_ids) - 1 :].sum())


@pytest.mark.slow
def test_implicit_reward_rounds_score_against_the_policy_s_own_reference(tmp_path, tiny_model_dir, monkeypatch):
    """Iteration 0 scores policy_0 against ``reward.reference``; iteration 1 scores policy_1
    against policy_0, the model it was trained against (DICE): float64 checks of both."""
    from helpers import tiny_model, tiny_tokenizer

    from lrdpo_fast.train.checkpoint import apply_model_weights, load_model_weights

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    ref_dir = tmp_path / "reference"
    tiny_model("llama", seed=1).save_pretrained(ref_dir)
    tiny_tokenizer().save_pretrained(ref_dir)
    cfg_path = _write_run(tmp_path, tiny_model_dir, iterations=2, eval_section=False, sampler_extra=EAGER)
    cfg_path.write_text(
        cfg_path.read_text().replace(
            'reward: {callable: "loop_rules:score"}', f"reward: {{implicit: true, reference: {ref_dir}}}"
        )
    )
    lf.iterate(lf.IterateConfig.from_yaml(cfg_path), progress=False, stop_after=(1, "score"))
    run = tmp_path / "run"
    policy_0 = tiny_model("llama", seed=0).double().eval()
    policy_1 = tiny_model("llama", seed=0)
    apply_model_weights(policy_1, load_model_weights(run / "iter_0/policy"))
    policy_1 = policy_1.double().eval()
    pairs = {0: (policy_0, tiny_model("llama", seed=1).double().eval()), 1: (policy_1, policy_0)}
    for i, (policy, ref) in pairs.items():
        samples = [json.loads(x) for x in (run / f"iter_{i}/samples.jsonl").read_text().splitlines()]
        scores = [json.loads(x)["score"] for x in (run / f"iter_{i}/scores.jsonl").read_text().splitlines()]
        for x, got in list(zip(samples, scores))[:4]:
            ids = x["response_ids"] + ([] if x["truncated"] or x["response_ids"][-1] == 2 else [2])
            want = _logp64(policy, x["prompt_ids"], ids) - _logp64(ref, x["prompt_ids"], ids)
            assert got == pytest.approx(want, abs=2e-4), (i, x["truncated"])
    marker = json.loads((run / "iter_1/done/score.json").read_text())
    assert marker["implicit_reference"] == str(tiny_model_dir)
