"""DICE's implicit reward: lrdpo-fast's packed, fused ``ImplicitReward`` vs the naive path.

``python -m bench.bench_implicit_reward [--device cpu|cuda] [--prompts 8] [--samples 4] ...``

Both contenders score the same responses (k per prompt, log-normal lengths, token ids ending in
EOS) under the same two random Llamas (policy and reference), reward = log pi(y|x) - log ref(y|x)
summed over the response tokens:
- ``lrdpo-fast ImplicitReward``: responses packed without padding into micro-batches of at most
  ``--budget`` tokens, decoder body with varlen attention, hidden states + LM head into the fused
  log-prob kernel (no [tokens x vocab] logits), ``torch.no_grad``;
- ``naive (transformers forward + log_softmax)``: right-padded batches (in input order, at most
  ``--budget`` tokens counting padding), ``model(input_ids, attention_mask).logits``, fp32
  ``log_softmax``, gather, masked sum; ``torch.no_grad``.
Each contender runs in its own process (bench/harness.py): warm-up, the median of ``--repeats``
timed calls, then one call under ``bench/memory.py``'s peak measurement (CUDA: allocated-memory
growth; CPU: resident high-water growth after malloc_trim). The table gives scored (response)
tokens/s, peak memory above the models and inputs, and the largest reward difference to the
naive path. Writes implicit_reward.json and .md to bench/results/<device>/. Defaults take about 3 minutes on 2 busy CPU cores (the naive path is most of it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

CONTENDERS = {
    "fused": "lrdpo-fast ImplicitReward",
    "naive": "naive (transformers forward + log_softmax)",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_implicit_reward", description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=4, help="responses per prompt")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prompt-median", type=float, default=48.0)
    p.add_argument("--response-median", type=float, default=96.0)
    p.add_argument("--sigma", type=float, default=0.6, help="log-normal sigma of lengths")
    p.add_argument("--max-len", type=int, default=512, help="cap per prompt and per response")
    p.add_argument("--budget", type=int, default=4096, help="max tokens per forward (both contenders)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma list of {list(CONTENDERS)}")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--out", default=None, help="results folder (default bench/results/<device>)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def make_inputs(args):
    """(prompts, responses): ``prompts * samples`` token-id lists, prompt-major (k per prompt)."""
    import random

    rng = random.Random(args.seed)

    def length(median):
        return max(1, min(args.max_len, int(round(rng.lognormvariate(math.log(median), args.sigma)))))

    def ids(n):
        return [rng.randrange(3, args.vocab) for _ in range(n)]

    prompts, responses = [], []
    for _ in range(args.prompts):
        prompt = [1] + ids(length(args.prompt_median))
        for _ in range(args.samples):
            prompts.append(prompt)
            responses.append(ids(length(args.response_median)) + [2])  # ends with EOS
    return prompts, responses


def build_models(args):
    import torch

    from lrdpo_fast.model.tiny import tiny_causal_lm

    heads = max(2, args.hidden // 32)
    kw = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=32,
        num_hidden_layers=args.layers,
        intermediate_size=args.hidden * 8 // 3,
        max_position_embeddings=4 * args.max_len,
    )
    dtype = getattr(torch, args.dtype)
    return [tiny_causal_lm("llama", seed=s, dtype=dtype, **kw).to(args.device).eval() for s in (0, 1)]


def naive_rewards(policy, ref, prompts, responses, budget, device):
    """Padded batches through the full transformers forward: materialized [B, L, V] logits."""
    import torch

    seqs = [(p + r, len(p)) for p, r in zip(prompts, responses)]
    batches, cur = [], []
    for i, (s, _) in enumerate(seqs):
        longest = max([len(seqs[j][0]) for j in cur] + [len(s)])
        if cur and (len(cur) + 1) * longest > budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    out = [0.0] * len(seqs)
    computed = 0
    with torch.no_grad():
        for idx in batches:
            L = max(len(seqs[i][0]) for i in idx)
            ids = torch.zeros(len(idx), L, dtype=torch.long)
            mask = torch.zeros(len(idx), L, dtype=torch.long)
            score = torch.zeros(len(idx), L - 1, dtype=torch.bool)
            for j, i in enumerate(idx):
                s, P = seqs[i]
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
                score[j, P - 1 : len(s) - 1] = True  # position t predicts token t + 1
            ids, mask, score = ids.to(device), mask.to(device), score.to(device)
            computed += ids.numel()
            diff = 0
            for sign, model in ((1.0, policy), (-1.0, ref)):
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
                logp = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2)
                diff = diff + sign * (logp * score).sum(-1).double()
                del logits, logp
            for j, i in enumerate(idx):
                out[i] = diff[j].item()
    return out, computed


def run_worker(args, key):
    import torch

    from bench.env import sync
    from bench.memory import peak_growth
    from bench.timing import time_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy, ref = build_models(args)
    prompts, responses = make_inputs(args)
    scored = sum(len(r) for r in responses)
    info = {}
    if key == "fused":
        from lrdpo_fast.loop.rewards import ImplicitReward

        reward = ImplicitReward(policy, ref, None, max_tokens_per_batch=args.budget)

        def call():
            info["rewards"] = reward(prompts, responses)

        examples, _ = reward._examples([reward.tokenize(p, r) for p, r in zip(prompts, responses)])
        info["computed"] = sum(ex.num_tokens for ex in examples)  # packed: a prompt once per sequence
    else:

        def call():
            info["rewards"], info["computed"] = naive_rewards(policy, ref, prompts, responses, args.budget, args.device)

    timing = time_step(call, args.device, args.warmup, args.repeats)
    sync(args.device)
    memory = peak_growth(call, args.device)
    return {
        "key": key,
        "name": CONTENDERS[key],
        "status": "ok",
        "scored_tokens": scored,
        "real_tokens": sum(len(p) + len(r) for p, r in zip(prompts, responses)),
        "computed_tokens": info["computed"],
        "median_s": timing["median_s"],
        "times_s": timing["times_s"],
        "tokens_per_s": scored / timing["median_s"],
        "peak_mib": memory["peak_bytes"] / 2**20,
        "memory_method": memory["method"],
        "rewards": info["rewards"],
    }


def worker_entry(spec: dict) -> dict:
    """Harness entry (bench/harness.py): one contender in this fresh process."""
    args = parse_args([*spec["argv"], "--device", spec["device"]])
    return run_worker(args, spec["key"])


def run_contender(args, argv, key) -> dict:
    from bench.harness import run_isolated

    # argparse keeps the last value of a repeated option: the resolved device wins
    r = run_isolated(
        "bench.bench_implicit_reward:worker_entry", {"argv": argv, "device": args.device, "key": key}, timeout=3600
    )
    return r if r.get("status") == "ok" else {"key": key, "name": CONTENDERS[key], "status": r.get("status")}


def render(args, rows) -> str:
    lines = [
        f"{args.device}, {args.dtype}, {args.threads} threads; two Llamas d={args.hidden} x {args.layers} layers, "
        f"V={args.vocab}; {args.prompts} prompts x {args.samples} responses (log-normal, medians "
        f"{args.prompt_median:g}/{args.response_median:g} tokens), budget {args.budget} tokens per forward",
        "",
        "| contender | scored tokens/s | time (s) | peak memory (MiB) | computed / real tokens | max abs reward diff vs naive |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    naive = next((r for r in rows if r["key"] == "naive" and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['status']} | | | | |")
            continue
        diff = max(abs(a - b) for a, b in zip(r["rewards"], naive["rewards"])) if naive else float("nan")
        r["max_abs_diff_vs_naive"] = diff
        lines.append(
            f"| {r['name']} | {r['tokens_per_s']:.0f} | {r['median_s']:.2f} | {r['peak_mib']:.1f} | "
            f"{r['computed_tokens'] / r['real_tokens']:.2f} | {diff:.2e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:  # by hand: one contender in this process
        print(json.dumps({k: v for k, v in run_worker(args, args.worker).items() if k != "rewards"}), flush=True)
        return 0
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    bad = [k for k in keys if k not in CONTENDERS]
    if bad:
        print(f"--contenders: unknown {bad}; choose from {list(CONTENDERS)}", file=sys.stderr)
        return 2
    rows = []
    for key in keys:
        t0 = time.time()
        rows.append(run_contender(args, argv, key))
        print(f"# {CONTENDERS[key]}: {rows[-1]['status']} in {time.time() - t0:.1f} s", file=sys.stderr)
    table = render(args, rows)
    print(table)
    from bench.env import REPO, device_slug, metadata_record

    res = {
        "args": vars(args),
        "meta": metadata_record(args.device),
        "rows": [{k: v for k, v in r.items() if k != "rewards"} for r in rows],
        "table": table,
    }
    out_dir = Path(args.out) if args.out else REPO / "bench" / "results" / device_slug(args.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "implicit_reward.json").write_text(json.dumps(res, indent=1) + "\n")
    (out_dir / "implicit_reward.md").write_text(markdown(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def markdown(res: dict) -> str:
    """implicit_reward.md: provenance and the table."""
    meta = res["meta"]
    return (
        f"# Implicit reward: packed + fused vs transformers forward\n\n"
        f"Reproduce: `python -m bench.bench_implicit_reward` (or `python -m bench --only implicit_reward`).\n\n"
        f"Device: **{meta['device_name']}** ({meta['device']}), commit `{meta['git_commit']}`, {meta['date_utc']}; "
        f"torch {meta['versions'].get('torch')}, transformers {meta['versions'].get('transformers')}. Each "
        f"contender in a fresh process; shared machine: compare within this run.\n\n{res['table']}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
