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
Each contender runs in its own process (``--worker``): warm-up, the median of ``--repeats``
timed calls, then one call under ``bench/memory.py``'s peak measurement (CUDA: allocated-memory
growth; CPU: resident high-water growth after malloc_trim). The table gives scored (response)
tokens/s, peak memory above the models and inputs, and the largest reward difference to the
naive path. Defaults take about 3 minutes on 2 busy CPU cores (the naive path is most of it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

CONTENDERS = {
    "fused": "lrdpo-fast ImplicitReward",
    "naive": "naive (transformers forward + log_softmax)",
}
MARK = "IMPLICIT_REWARD_RESULT "


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
    kw = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_attention_heads=heads,
              num_key_value_heads=max(1, heads // 2), head_dim=32, num_hidden_layers=args.layers,
              intermediate_size=args.hidden * 8 // 3, max_position_embeddings=4 * args.max_len)
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
                ids[j, :len(s)] = torch.tensor(s)
                mask[j, :len(s)] = 1
                score[j, P - 1:len(s) - 1] = True  # position t predicts token t + 1
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
            info["rewards"], info["computed"] = naive_rewards(policy, ref, prompts, responses, args.budget,
                                                              args.device)
    timing = time_step(call, args.device, args.warmup, args.repeats)
    sync(args.device)
    memory = peak_growth(call, args.device)
    return {
        "key": key, "name": CONTENDERS[key], "status": "ok", "scored_tokens": scored,
        "real_tokens": sum(len(p) + len(r) for p, r in zip(prompts, responses)),
        "computed_tokens": info["computed"], "median_s": timing["median_s"], "times_s": timing["times_s"],
        "tokens_per_s": scored / timing["median_s"], "peak_mib": memory["peak_bytes"] / 2**20,
        "memory_method": memory["method"], "rewards": info["rewards"],
    }


def run_contender(args, argv, key) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # argparse keeps the last value of a repeated option: the resolved device wins
    proc = subprocess.run([sys.executable, "-m", "bench.bench_implicit_reward", *argv, "--device", args.device,
                           "--worker", key], cwd=repo, env=env, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    if proc.returncode < 0 or proc.returncode == 137:
        return {"key": key, "name": CONTENDERS[key], "status": f"n/a: killed (signal {-proc.returncode}; out of memory?)"}
    return {"key": key, "name": CONTENDERS[key], "status": f"n/a: exited {proc.returncode}: {tail}"}


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
        lines.append(f"| {r['name']} | {r['tokens_per_s']:.0f} | {r['median_s']:.2f} | {r['peak_mib']:.1f} | "
                     f"{r['computed_tokens'] / r['real_tokens']:.2f} | {diff:.2e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        try:
            result = run_worker(args, args.worker)
        except Exception as e:  # noqa: BLE001 - one line the parent can show
            result = {"key": args.worker, "name": CONTENDERS.get(args.worker, args.worker),
                      "status": f"n/a: {type(e).__name__}: {str(e)[:200]}"}
        print(MARK + json.dumps(result), flush=True)
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
    if args.json:
        from bench.env import metadata_record

        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "meta": metadata_record(args.device),
                       "rows": [{k: v for k, v in r.items() if k != "rewards"} for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
