"""The vLLM sampler: generated tokens/s against transformers ``generate`` and against raw vLLM, and
the in-memory weight sync against a save-and-restart.

``python -m bench.bench_sampler [--prompts 32] [--n 4] [--max-new-tokens 128] [--repeats 3] [--out DIR]``

One ~20M-parameter Llama (``bench.train_data.build_model``: hidden 256, 4 layers, 32k vocabulary,
fp32) saved once to a temporary folder; the same seeded prompts (token ids, log-normal lengths,
median 48) for every contender; temperature 1, top-p 1, ``n`` samples of at most
``max_new_tokens`` per prompt. Each worker runs in a fresh process (``bench/harness.py``'s
``run_isolated``) after a warm-up call, and keeps the best of ``--repeats`` timed calls (on a shared machine noise only
slows a run down). Generated tokens are counted as produced (a sample that hits EOS stops early):
- worker ``transformers``: ``model.generate(do_sample=True, top_k=0, num_return_sequences=n)`` on
  the left-padded batch of all prompts;
- worker ``vllm``, two contenders on ONE engine (the sampler's), their calls alternated so that
  load on a shared machine hits both alike: raw ``LLM.generate`` with one request per prompt and
  ``SamplingParams(n=n, seed=0)``, and ``VLLMSampler.generate(prompts, n=n)`` (n seeded requests
  of one sample each, ``Sample`` objects out);
- worker ``sync``: ``VLLMSampler.load_weights(state_dict)`` (median of ``--sync-repeats``) against
  save_pretrained + engine shutdown + a new ``VLLMSampler`` on the saved folder in the same
  process (vllm already imported; a restart in a new process adds the import, reported as the
  cold start); checked: greedy samples after the in-memory sync equal the restarted engine's.
The engine: fp32, ``max_model_len`` 512, eager mode by default, in-process, and on the CPU the
sampler's defaults (``VLLM_CPU_KVCACHE_SPACE=1``, whole-prompt prefill). Goals: the sampler within
1.1x of raw vLLM's time; the weight sync at least 100x faster than the restart; its check
(``verify``, on by default) under 10% of a verified ``load_weights``.

Writes ``sampler.json`` and ``sampler.md`` to ``bench/results/<device>/`` (``--out`` to change).
Takes about 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("transformers", "vllm", "sync")
GOAL_SAMPLER_VS_VLLM = 1.1
GOAL_SYNC_SPEEDUP = 100.0
GOAL_VERIFY_SHARE = 0.10


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_sampler", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt-median", type=float, default=48.0)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3, help="timed generate calls per contender (best kept)")
    p.add_argument("--sync-repeats", type=int, default=5, help="timed load_weights calls (median kept)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="let vLLM compile the model (default: enforce_eager)")
    p.add_argument("--only", default=",".join(CONTENDERS), help=f"comma list of {','.join(CONTENDERS)}")
    p.add_argument("--out", default=None, help="results folder (default bench/results/<device>)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per worker process")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_prompts(args) -> list[list[int]]:
    """``args.prompts`` token-id prompts: BOS + log-normal many ids (median ``prompt_median``)."""
    from bench.train_data import VOCAB

    rng = random.Random(args.seed)
    out = []
    for _ in range(args.prompts):
        n = max(4, min(256, int(round(args.prompt_median * math.exp(rng.gauss(0.0, 0.7))))))
        out.append([1] + [rng.randrange(4, VOCAB) for _ in range(n - 1)])
    return out


def engine_kwargs(args) -> dict:
    return {"dtype": "float32", "max_model_len": args.max_model_len, "enforce_eager": not args.compile}


def _engine_env() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _best(fn, repeats: int) -> tuple[float, int, list[float]]:
    """(best seconds, generated tokens, all seconds) of ``repeats`` calls of ``fn`` (it returns
    its token count)."""
    times, tokens = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        times.append(time.perf_counter() - t0)
    return min(times), tokens, times


def run_transformers(args, prompts) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1

    def gen(max_new_tokens=args.max_new_tokens, rows=len(prompts)) -> int:
        with torch.no_grad():
            out = model.generate(
                ids[:rows],
                attention_mask=mask[:rows],
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=args.n,
                eos_token_id=2,
                pad_token_id=0,
                use_cache=True,
            )  # the saved config says use_cache=False (training)
        new = out[:, width:]
        total = 0
        for row in new.tolist():
            total += row.index(2) + 1 if 2 in row else len(row)
        return total

    torch.manual_seed(args.seed)
    gen(max_new_tokens=4, rows=4)  # warm-up
    seconds, tokens, times = _best(gen, args.repeats)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "all_s": times}


def run_vllm(args, prompts) -> dict:
    """Raw ``LLM.generate`` and ``VLLMSampler.generate`` alternated on the sampler's engine."""
    _engine_env()
    t0 = time.perf_counter()
    from lrdpo_fast.loop.sampler import VLLMSampler

    sampler = VLLMSampler(args.model_dir, seed=args.seed, **engine_kwargs(args))
    t_start = time.perf_counter() - t0  # the cold start: vllm's import included
    from vllm import SamplingParams

    llm = sampler.llm
    requests = [{"prompt_token_ids": p} for p in prompts]

    def raw(max_tokens=args.max_new_tokens, k=len(prompts)) -> int:
        params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=args.seed)
        outs = llm.generate(requests[:k], params, use_tqdm=False)
        return sum(len(o.token_ids) for r in outs for o in r.outputs)

    def ours(max_new_tokens=args.max_new_tokens, k=len(prompts)) -> int:
        out = sampler.generate(prompts[:k], n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
        return sum(s.num_tokens for g in out for s in g)

    raw(max_tokens=4, k=4)
    ours(max_new_tokens=4, k=4)
    times = {"vllm": [], "sampler": []}
    tokens = {}
    for _ in range(args.repeats):
        for name, fn in (("vllm", raw), ("sampler", ours)):
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
    sampler.close()
    out = {"engine_start_s": t_start}
    for name in times:
        best = min(times[name])
        out[name] = {"seconds": best, "tokens": tokens[name], "tokens_per_s": tokens[name] / best, "all_s": times[name]}
    return out


def run_sync(args, prompts) -> dict:
    _engine_env()
    import torch

    from bench.train_data import build_model
    from lrdpo_fast.loop.sampler import VLLMSampler

    new = build_model(seed=args.seed + 1)
    new_sd = new.state_dict()
    old_sd = build_model(seed=args.seed).state_dict()
    sampler = VLLMSampler(args.model_dir, seed=args.seed, **engine_kwargs(args))
    check = prompts[:4]
    greedy = dict(n=1, temperature=0.0, max_new_tokens=16)
    times, plain, checks = [], [], []
    for i in range(args.sync_repeats):  # verified (the default), unverified, and the check alone
        weights = new_sd if i % 2 == 0 else old_sd
        times.append(sampler.load_weights(weights))
        sampler.verify_sync = False
        plain.append(sampler.load_weights(weights))
        sampler.verify_sync = True
        t0 = time.perf_counter()
        sampler.verify(weights)
        checks.append(time.perf_counter() - t0)
    sampler.load_weights(new_sd)
    synced = [g[0].response_ids for g in sampler.generate(check, **greedy)]
    params = sum(t.numel() for t in new_sd.values())

    folder = tempfile.mkdtemp(prefix="bench-sampler-restart-")
    t0 = time.perf_counter()
    new.save_pretrained(folder)
    t_save = time.perf_counter() - t0
    tokenizer = sampler.tokenizer
    t0 = time.perf_counter()
    sampler.close()
    t_close = time.perf_counter() - t0
    tokenizer.save_pretrained(folder)  # not timed: a restart would reuse the tokenizer folder
    t0 = time.perf_counter()
    restarted = VLLMSampler(folder, seed=args.seed, **engine_kwargs(args))
    t_start = time.perf_counter() - t0
    fresh = [g[0].response_ids for g in restarted.generate(check, **greedy)]
    restarted.close()
    shutil.rmtree(folder, ignore_errors=True)
    sync_s = statistics.median(times)
    restart_s = t_save + t_close + t_start
    return {
        "load_weights_s": sync_s,
        "load_weights_all_s": times,
        "load_weights_unverified_s": statistics.median(plain),
        "verify_s": statistics.median(checks),
        "verify_share": statistics.median(checks) / statistics.median(times),
        "parameters": params,
        "restart_s": restart_s,
        "save_s": t_save,
        "close_s": t_close,
        "engine_start_s": t_start,
        "speedup": restart_s / sync_s,
        "greedy_after_sync_equals_restart": synced == fresh,
        "weights_device": str(next(iter(new_sd.values())).device),
        "torch_threads": torch.get_num_threads(),
    }


WORKERS = {"transformers": run_transformers, "vllm": run_vllm, "sync": run_sync}


def worker(spec: dict) -> dict:
    """Child entry (``run_isolated("bench.bench_sampler:worker", spec)``): spec = {"worker": name,
    "argv": the command line, "model_dir": the saved model}; the worker's result + status ok."""
    import torch

    args = parse_args(spec["argv"])
    args.model_dir = spec["model_dir"]
    torch.set_num_threads(args.threads)
    return {"status": "ok", **WORKERS[spec["worker"]](args, make_prompts(args))}


def _run(name: str, argv: list[str], model_dir: str, timeout: float) -> dict:
    import datetime

    from bench.harness import run_isolated

    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = run_isolated(
        "bench.bench_sampler:worker",
        {"worker": name, "argv": argv, "model_dir": model_dir},
        timeout=timeout,
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    )
    # other processes on the machine: OpenMP threads sharing a busy core spin-wait, so timings
    # taken under load are slower and noisier (each figure is a best-of)
    return {
        **r,
        "wall_s": time.perf_counter() - t0,
        "date_utc": date,
        "load_average_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


CONFIG_KEYS = ("prompts", "n", "max_new_tokens", "prompt_median", "max_model_len", "threads", "compile", "seed")


def _load(row: dict) -> str:
    load = row.get("load_average_1m")
    return f"{load[0]:.1f} -> {load[1]:.1f} ({row.get('date_utc', '?')})" if load else "n/a"


def report(res: dict) -> str:
    """Markdown of a results dict (what sampler.md holds)."""
    # a caller may replace "meta" with a shorter one (the suite keeps its own provenance)
    meta, cfg, rows = res.get("meta", {}), res["config"], res["results"]
    versions = meta.get("versions", {})
    lines = [
        "# vLLM sampler",
        "",
        f"{meta.get('device_name', '?')} ({meta.get('device', '?')}, {cfg['threads']} threads), commit "
        f"{meta.get('git_commit', '?')}, {meta.get('date_utc', '?')}; torch {versions.get('torch', '?')}, vllm "
        f"{res.get('vllm_version', '?')}, transformers {versions.get('transformers', '?')}. "
        f"The machine's {meta.get('host_cpus', '?')} cores are shared: "
        f"the load average (1 min) is given per run (OpenMP threads on a busy core spin-wait, so a loaded "
        f"run is slower and noisier; each time is a best-of).",
        "",
        f"{cfg['parameters'] / 1e6:.1f}M-parameter Llama (hidden 256, 4 layers, 32k vocabulary), fp32; "
        f"{cfg['prompts']} prompts (median {cfg['prompt_median']:.0f} tokens) x {cfg['n']} samples x at most "
        f"{cfg['max_new_tokens']} new tokens, temperature 1; the best of the timed calls after a warm-up (each row's "
        f"calls are in sampler.json); "
        f"raw vLLM and the sampler alternate on one engine (fp32, "
        f"{'compiled' if cfg['compile'] else 'eager'}), transformers and the weight sync in processes of their own.",
        "",
        "| contender | generated tokens | time (s) | tokens/s | time / raw vLLM | load avg (1 min) during the run |",
        "|---|---:|---:|---:|---:|---|",
    ]
    ref = rows.get("vllm", {}).get("seconds") if rows.get("vllm", {}).get("status") == "ok" else None
    labels = {
        "sampler": "**lrdpo-fast `VLLMSampler.generate`**",
        "vllm": "raw vLLM `LLM.generate` (n per request, same engine)",
        "transformers": "transformers `generate` (batched, sampling)",
    }
    for name in ("sampler", "vllm", "transformers"):
        r = rows.get(name)
        if r is None:
            continue
        if r["status"] != "ok":
            lines.append(f"| {labels[name]} | n/a | n/a | n/a | {r['status'][:80]} | {_load(r)} |")
            continue
        ratio = f"{r['seconds'] / ref:.2f}x" if ref else "n/a"
        lines.append(
            f"| {labels[name]} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {ratio} | {_load(r)} |"
        )
    s = rows.get("sync")
    if s and s["status"] == "ok":
        lines += [
            "",
            "| weight sync | time (s) |",
            "|---|---:|",
            f"| **`load_weights(state_dict)`** in memory (median of {len(s['load_weights_all_s'])}) | "
            f"**{s['load_weights_s']:.4f}** |",
            f"| of which the sync check (`verify`, probe of 16 tokens; median) | {s['verify_s']:.4f} "
            f"({100 * s['verify_share']:.1f}%) |",
            f"| `load_weights` with `verify_sync=False` (median) | {s['load_weights_unverified_s']:.4f} |",
            f"| save_pretrained + shutdown + new engine, same process | {s['restart_s']:.2f} (save "
            f"{s['save_s']:.2f}, shutdown {s['close_s']:.2f}, start {s['engine_start_s']:.2f}) |",
        ]
        cold = rows.get("sampler", {}).get("engine_start_s")
        if cold:
            lines.append(f"| new process: import vllm + start the engine (cold start) | {cold:.2f} |")
        lines += [
            "",
            f"{s['parameters'] / 1e6:.1f}M parameters; greedy samples after the in-memory sync equal the restarted "
            f"engine's: {s['greedy_after_sync_equals_restart']}. Load average during the run: {_load(s)}.",
        ]
    elif s:
        lines += ["", f"weight sync: {s['status'][:200]}"]
    lines += ["", "Goals:"]
    for g in res["goals"]:
        lines.append(f"- {g['name']}: {g['value']} (goal {g['goal']}): **{'PASS' if g['passed'] else 'FAIL'}**")
    cold = rows.get("sampler", {}).get("engine_start_s")
    if s and s.get("status") == "ok" and cold:
        lines.append(
            f"- (for reference, not the goal) a restart in a new process (vllm import + engine start, no save) "
            f"/ load_weights: {cold / s['load_weights_s']:.0f}x"
        )
    return "\n".join(lines) + "\n"


def goals(rows: dict) -> list[dict]:
    out = []
    if rows.get("sampler", {}).get("status") == "ok" and rows.get("vllm", {}).get("status") == "ok":
        ratio = rows["sampler"]["seconds"] / rows["vllm"]["seconds"]
        out.append(
            {
                "name": "sampler time / raw vLLM time",
                "value": f"{ratio:.3f}x",
                "goal": f"<= {GOAL_SAMPLER_VS_VLLM}x",
                "passed": ratio <= GOAL_SAMPLER_VS_VLLM,
            }
        )
    if rows.get("sync", {}).get("status") == "ok":
        sp = rows["sync"]["speedup"]
        out.append(
            {
                "name": "restart time / load_weights time",
                "value": f"{sp:.0f}x",
                "goal": f">= {GOAL_SYNC_SPEEDUP:.0f}x",
                "passed": sp >= GOAL_SYNC_SPEEDUP and rows["sync"]["greedy_after_sync_equals_restart"],
            }
        )
        share = rows["sync"]["verify_share"]
        out.append(
            {
                "name": "sync check / verified load_weights",
                "value": f"{100 * share:.1f}%",
                "goal": f"< {100 * GOAL_VERIFY_SHARE:.0f}%",
                "passed": share < GOAL_VERIFY_SHARE,
            }
        )
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    bad = [c for c in only if c not in CONTENDERS]
    if bad:
        print(f"--only: unknown {bad}; choose from {CONTENDERS}", file=sys.stderr)
        return 2
    import torch

    from bench.env import REPO, default_device, device_slug, metadata_record
    from bench.train_data import build_model, build_tokenizer

    device = default_device()
    meta = metadata_record(device)
    out_dir = Path(args.out) if args.out else REPO / "bench" / "results" / device_slug(device)
    pass_on = [a for a in argv if not a.startswith("--out")]
    if "--out" in argv:  # "--out DIR": drop the value as well
        i = argv.index("--out")
        pass_on = argv[:i] + argv[i + 2 :]
    rows: dict = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-sampler-model-") as model_dir:
        torch.manual_seed(args.seed)
        model = build_model(seed=args.seed)
        model.save_pretrained(model_dir)
        build_tokenizer().save_pretrained(model_dir)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"bench_sampler: {params / 1e6:.1f}M-parameter Llama, {args.prompts} prompts x {args.n} samples x "
            f"{args.max_new_tokens} tokens on {meta['device_name']}",
            flush=True,
        )
        for name in only:
            r = _run(name, pass_on, model_dir, args.timeout)
            if name == "vllm" and r["status"] == "ok":  # one worker, two contenders
                for sub in ("vllm", "sampler"):
                    rows[sub] = {
                        "status": "ok",
                        "engine_start_s": r["engine_start_s"],
                        **r[sub],
                        **{k: r[k] for k in ("date_utc", "load_average_1m")},
                    }
            elif name == "vllm":
                rows["vllm"] = rows["sampler"] = r
            else:
                rows[name] = r
            brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if not isinstance(v, list)}
            print(f"  {name}: {brief}", flush=True)
    try:
        from importlib.metadata import version

        vllm_version = version("vllm-cpu") if device == "cpu" else version("vllm")
    except Exception:  # noqa: BLE001
        vllm_version = "missing"
    config = {
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "prompt_median": args.prompt_median,
        "max_model_len": args.max_model_len,
        "repeats": args.repeats,
        "threads": args.threads,
        "compile": args.compile,
        "seed": args.seed,
        "parameters": params,
    }
    old_path = out_dir / "sampler.json"
    if old_path.is_file():  # keep the rows not re-run when they were measured on the same set-up
        old = json.loads(old_path.read_text())
        if all(old.get("config", {}).get(k) == config[k] for k in CONFIG_KEYS):
            rows = {**{k: v for k, v in old.get("results", {}).items() if k not in rows}, **rows}
    res = {
        "meta": meta,
        "vllm_version": vllm_version,
        "load_average_1m": {"start": load_before[0], "end": os.getloadavg()[0]},
        "config": config,
        "results": rows,
    }
    res["goals"] = goals(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sampler.json").write_text(json.dumps(res, indent=2) + "\n")
    md = report(res)
    (out_dir / "sampler.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
