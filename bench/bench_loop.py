"""The iterative loop end to end: ``lf.iterate`` against the seeds' scripted pipeline.

``python -m bench.bench_loop [--prompts 64] [--n 4] [--max-new-tokens 64] [--iterations 3] [--variants auto,compiled,sampler] [--out DIR]``
(also ``python -m bench --only loop``).

Same start policy (``bench.train_data.build_model``: ~20M-parameter Llama, hidden 256, 4 layers,
32k word vocabulary, fp32, saved once with save_pretrained), same prompts (word-level text,
log-normal lengths, median 48), k samples of at most ``max_new_tokens`` at temperature 1, the same
rule reward (``rule_reward``), best/worst pairs, DPO at the same beta, learning rate and pairs per
step, on the CPU:

- **scripted** (the seeds' way, separate programs handing over through files): ``sample`` (a fresh
  process: import vLLM, a new engine loading policy_i from disk, ``LLM.generate``, samples.jsonl),
  ``score`` (a fresh process: rule reward, best/worst pairs, pairs.jsonl), ``train`` (a fresh
  process: TRL's DPOTrainer with the policy and the reference both loaded from disk,
  save_pretrained of policy_{i+1}). Every iteration pays all three start-ups again.
- **lrdpo-fast** (one process): ``lf.iterate`` on a run directory; its engine and policy live
  for the whole run, each later iteration syncs weights in memory. Run for ``--iterations``
  (default 2): the start-up (interpreter, imports, model load, engine creation) is what the
  wall time holds beyond the phases; "first iteration" = start-up + iteration 0's phases,
  "later iteration" = iteration 1's phases (what every further iteration costs).

Wall time per phase comes from each side's own clocks (lf: the phase markers' ``wall_s``); each
process's wall time (launch to exit) and peak resident memory of its process tree are measured
from outside by bench/harness.py. Writes loop.json and loop.md to bench/results/<device>/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.loop_report import render, table

DEFAULTS = {
    "prompts": 64,
    "n": 4,
    "max_new_tokens": 64,
    "prompt_median": 48.0,
    "pairs_per_step": 8,
    "beta": 0.1,
    "alpha": 0.02,
    "learning_rate": 5e-7,
    "max_model_len": 512,
    "seed": 0,
    "threads": 2,
}
VARIANTS = {"auto": {}, "compiled": {"enforce_eager": False}, "sampler": {"reference": "sampler"}}
# the settings both sides' programs take from the comparison's config
COMMON_KEYS = ("n", "max_new_tokens", "max_model_len", "seed", "threads", "beta", "learning_rate", "pairs_per_step")
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}


def rule_reward(prompts, responses):
    """The rule reward of both sides: mean of (word id mod 10) over the response's words."""
    out = []
    for r in responses:
        words = [w for w in r.split() if w[:1] == "w" and w[1:].isdigit()]
        out.append(sum(int(w[1:]) % 10 for w in words) / max(1, len(words)))
    return out


def make_prompts(cfg: dict) -> list[str]:
    from bench.train_data import VOCAB, _words

    rng = random.Random(cfg["seed"])
    lengths = [
        max(4, min(256, int(round(cfg["prompt_median"] * math.exp(rng.gauss(0.0, 0.7))))))
        for _ in range(cfg["prompts"])
    ]
    return [_words(rng, n, VOCAB) for n in lengths]


def _read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path, rows) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


# ---- the scripted pipeline: three programs per iteration --------------------------------------------
def scripted_sample(spec: dict) -> dict:
    """A fresh vLLM engine on policy_i from disk; k samples per prompt -> samples.jsonl."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(spec["threads"])
    from vllm import LLM, SamplingParams

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm = LLM(
        spec["policy"],
        seed=spec["seed"],
        dtype="float32",
        max_model_len=spec["max_model_len"],
        gpu_memory_utilization=0.5,
        enable_chunked_prefill=False,
    )
    t_engine = time.perf_counter() - t0
    prompts = [r["prompt"] for r in _read_jsonl(spec["prompts"])]
    # the engine's seed; a per-request seed would give the n samples of a request one generator
    params = SamplingParams(n=spec["n"], temperature=1.0, top_p=1.0, max_tokens=spec["max_new_tokens"])
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    t_gen = time.perf_counter() - t0
    rows, tokens = [], 0
    for p, o in zip(prompts, outs):
        for c in o.outputs:
            rows.append({"prompt": p, "response": c.text, "tokens": len(c.token_ids), "finish": c.finish_reason})
            tokens += len(c.token_ids)
    _write_jsonl(spec["samples"], rows)
    distinct = sum(len({c.text for c in o.outputs}) for o in outs)
    return {
        "status": "ok",
        "import_s": t_import,
        "engine_s": t_engine,
        "generate_s": t_gen,
        "tokens": tokens,
        "distinct_samples": distinct,
        "samples": len(rows),
    }


def scripted_score(spec: dict) -> dict:
    """Rule reward of every sample, best/worst pair per prompt (ties dropped) -> pairs.jsonl."""
    t0 = time.perf_counter()
    samples = _read_jsonl(spec["samples"])
    scores = rule_reward([s["prompt"] for s in samples], [s["response"] for s in samples])
    groups: dict[str, list] = {}
    for s, r in zip(samples, scores):
        groups.setdefault(s["prompt"], []).append((r, s["response"]))
    pairs = []
    for prompt, g in groups.items():
        best, worst = max(g, key=lambda x: x[0]), min(g, key=lambda x: x[0])
        if best[0] > worst[0]:
            pairs.append({"prompt": prompt, "chosen": best[1], "rejected": worst[1]})
    _write_jsonl(spec["pairs"], pairs)
    return {"status": "ok", "pairs": len(pairs), "score_s": time.perf_counter() - t0}


def scripted_train(spec: dict) -> dict:
    """TRL's DPOTrainer, policy and reference loaded from disk; save_pretrained(policy_{i+1})."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
    t_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-loop-trl-") as tmp:
        args = DPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=spec["pairs_per_step"],
            gradient_accumulation_steps=1,
            num_train_epochs=1,
            learning_rate=spec["learning_rate"],
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            beta=spec["beta"],
            loss_type=["sigmoid"],
            max_length=None,
            bf16=False,
            fp16=False,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            seed=spec["seed"],
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=True,
            warmup_steps=0,
            weight_decay=0.0,
        )
        t0 = time.perf_counter()
        trainer = DPOTrainer(
            model=model,
            ref_model=ref,
            args=args,
            train_dataset=Dataset.from_list(_read_jsonl(spec["pairs"])),
            processing_class=tokenizer,
        )
        trainer.train()
        t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.save_pretrained(spec["out"])
    tokenizer.save_pretrained(spec["out"])
    return {
        "status": "ok",
        "import_s": t_import,
        "load_s": t_load,
        "train_s": t_train,
        "save_s": time.perf_counter() - t0,
    }


# ---- lrdpo-fast: one process ---------------------------------------------------------------------------
def iterate_config(spec: dict):
    """The ``lf.IterateConfig`` of the lrdpo-fast side for ``spec`` (also bench/bench_start.py's)."""
    import lrdpo_fast as lf

    return lf.IterateConfig.from_dict(
        {
            "policy": spec["policy"],
            "prompts": spec["prompts"],
            "iterations": spec["iterations"],
            "prompts_per_iteration": spec["prompts_n"],
            "run_dir": spec["run_dir"],
            "seed": spec["seed"],
            "sampler": {
                "n": spec["n"],
                "temperature": 1.0,
                "top_p": 1.0,
                "max_new_tokens": spec["max_new_tokens"],
                "dtype": "float32",
                "max_model_len": spec["max_model_len"],
                "enforce_eager": spec.get("enforce_eager", "auto"),
                **spec.get("sampler_extra", {}),  # e.g. enforce_eager, cpu_threads (bench_loop_shapes)
            },
            "reward": {"callable": "bench.bench_loop:rule_reward"},
            "pairs": {"strategy": "best_worst", "drop_truncated": False},
            "train": {
                "beta": spec["beta"],
                "alpha": spec["alpha"],
                "learning_rate": spec["learning_rate"],
                "lr_scheduler": "constant",
                "pairs_per_step": spec["pairs_per_step"],
                "num_epochs": 1,
                "progress": False,
                "plot": False,
                "reference": spec.get("reference", "recompute"),
                **spec.get("train_extra", {}),
            },
        }
    )


def lrdpo_fast_run(spec: dict) -> dict:
    """``lf.iterate`` for ``spec["iterations"]`` on a fresh run directory; phase walls from the markers.
    ``first_sample_s``: from this function's start (imports included) to the start of the first
    sampling (the engine ready)."""
    t_launch = time.time()
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(spec["threads"])
    import lrdpo_fast as lf
    from lrdpo_fast.loop.run_dir import RunDir

    t_import = time.perf_counter() - t0
    cfg = iterate_config(spec)
    t0 = time.perf_counter()
    rows = lf.iterate(cfg, progress=False)
    total = time.perf_counter() - t0
    run = RunDir(Path(spec["run_dir"]))
    marker = run.marker(0, "sample")  # written when iteration 0's sampling ended
    first_sample = marker.stat().st_mtime - run.done_info(0, "sample")["wall_s"] - t_launch
    engine = json.loads((run.root / "engine.json").read_text())
    phases = [
        {p: run.done_info(i, p).get("wall_s") for p in ("sample", "score", "pairs", "train")}
        for i in range(spec["iterations"])
    ]
    # the train phase beyond Trainer.train: the Trainer's set-up, saving policy_{i+1}, its digest
    train_extra = [
        run.done_info(i, "train")["wall_s"] - run.done_info(i, "train")["time_train_s"]
        for i in range(spec["iterations"])
    ]
    return {
        "status": "ok",
        "import_s": t_import,
        "iterate_s": total,
        "first_sample_s": first_sample,
        "train_beyond_training_s": train_extra,
        "engine": engine,
        "phases": phases,
        "pairs": [r.get("pairs_kept") for r in rows[1:]],
        "summary": rows,
    }


# ---- the comparison ------------------------------------------------------------------------------------
def run_scripted(
    tmp: Path, policy: Path, common: dict, log=print, prompts: str = "prompts.jsonl", timeout: float = 1800
) -> dict:
    """The scripted pipeline's three programs on ``policy`` (each in a fresh, monitored process,
    ``timeout`` seconds at most), handing over through files in ``tmp``; stops at the first that fails."""
    from bench.harness import run_isolated

    stages = [
        (
            "sample",
            "bench.bench_loop:scripted_sample",
            {"policy": str(policy), "prompts": str(tmp / prompts), "samples": str(tmp / "samples.jsonl")},
        ),
        (
            "score",
            "bench.bench_loop:scripted_score",
            {"samples": str(tmp / "samples.jsonl"), "pairs": str(tmp / "pairs.jsonl")},
        ),
        (
            "train",
            "bench.bench_loop:scripted_train",
            {"policy": str(policy), "pairs": str(tmp / "pairs.jsonl"), "out": str(tmp / "policy_1")},
        ),
    ]
    scripted = {}
    for name, target, extra in stages:
        r = run_isolated(target, {**common, **extra}, timeout=timeout, env=ENGINE_ENV, monitor=True)
        scripted[name] = r
        log(f"  scripted {name}: {_brief(r)}")
        if r.get("status") != "ok":
            break
    return scripted


def run(cfg: dict, *, iterations: int = 3, variants: dict | None = None, log=print) -> dict:
    """Scripted (one iteration) against ``lf.iterate`` for ``iterations``, once per variant
    (name -> overrides of the run: ``enforce_eager``, ``reference``); the first is the headline."""
    from bench.harness import run_isolated
    from bench.train_data import build_model, build_tokenizer

    res: dict = {"config": {**cfg, "iterations_lrdpo_fast": iterations}}
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        tmp = Path(tmp)
        policy = tmp / "policy_0"
        model = build_model(seed=cfg["seed"])
        model.save_pretrained(policy)
        build_tokenizer().save_pretrained(policy)
        res["config"]["parameters"] = sum(p.numel() for p in model.parameters())
        del model
        _write_jsonl(tmp / "prompts.jsonl", [{"prompt": p} for p in make_prompts(cfg)])
        common = {k: cfg[k] for k in COMMON_KEYS}
        res["scripted"] = run_scripted(tmp, policy, common, log)
        spec = {
            **common,
            "alpha": cfg["alpha"],
            "policy": str(policy),
            "prompts": str(tmp / "prompts.jsonl"),
            "prompts_n": cfg["prompts"],
            "iterations": iterations,
        }
        res["variants"] = {}
        for name, overrides in (variants or {"default": {}}).items():
            run_dir = {"run_dir": str(tmp / f"run-{len(res['variants'])}")}
            ours = run_isolated(
                "bench.bench_loop:lrdpo_fast_run",
                {**spec, **overrides, **run_dir},
                timeout=3600,
                env=ENGINE_ENV,
                monitor=True,
            )
            ours.pop("summary", None)
            res["variants"][name] = {"overrides": overrides, **ours}
            log(f"  lrdpo-fast iterate x{iterations} ({name}): {_brief(ours)}")
        res["lrdpo_fast"] = next(iter(res["variants"].values()))
    res["table"] = table(res)
    return res


def _brief(r: dict) -> str:
    if r.get("status") != "ok":
        return str(r.get("status"))
    p = r["process"]
    return f"{p['wall_s']:.1f} s, peak {p['peak_rss_bytes'] / 2**20:.0f} MiB"


def write(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "loop.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out_dir / "loop.md").write_text(render(res))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_loop", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=DEFAULTS["prompts"])
    p.add_argument("--n", type=int, default=DEFAULTS["n"], help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"])
    p.add_argument("--pairs-per-step", type=int, default=DEFAULTS["pairs_per_step"])
    p.add_argument("--iterations", type=int, default=3, help="lrdpo-fast iterations (>= 2 gives a later one)")
    p.add_argument(
        "--variants",
        default="auto",
        help="comma list of lrdpo-fast runs: auto (the defaults), compiled (enforce_eager: false, the old "
        "default), sampler (reference: sampler)",
    )
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    p.add_argument("--out", default=None, help="results folder (default bench/results/<device>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not __package__:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.env import REPO, device_slug, metadata_record

    cfg = dict(
        DEFAULTS,
        prompts=args.prompts,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        pairs_per_step=args.pairs_per_step,
        threads=args.threads,
    )
    res = {"meta": metadata_record("cpu"), "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"}
    print(
        f"bench_loop: {cfg['prompts']} prompts x {cfg['n']} x {cfg['max_new_tokens']} tokens on "
        f"{res['meta']['device_name']}",
        flush=True,
    )
    res.update(run(cfg, iterations=args.iterations, variants={v: VARIANTS[v] for v in args.variants.split(",")}))
    try:
        from importlib.metadata import version

        res["vllm_version"] = version("vllm-cpu")
    except Exception:  # noqa: BLE001
        res["vllm_version"] = "unknown"
    out_dir = Path(args.out) if args.out else REPO / "bench" / "results" / device_slug("cpu")
    write(res, out_dir)
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
