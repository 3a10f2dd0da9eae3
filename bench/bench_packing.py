"""Packed, padding-free LR-DPO step vs the padded layout TRL's DPOTrainer uses.

Standalone: ``python bench/bench_packing.py [--device cpu|cuda] [--pairs 8] [--steps 3] ...``.
Prints a markdown table of tokens/s (real, non-pad tokens) and peak memory of one
forward+backward of the LR-DPO loss on a small random Llama, for:
- ``padded (TRL)``: chosen and rejected concatenated into one [2B, Lmax] batch right-padded to
  the longest sequence, attention mask, full [2B, Lmax, V] logits, log_softmax + gather;
- ``packed + logits``: our packed stream with varlen attention, then materialized [N, V] logits
  (isolates the gain of packing alone);
- ``packed + fused``: our path, ``model_sequence_logprobs`` (hidden states -> fused LM-head kernel).
Every contender sees the same pairs (a long-tailed, log-normal length distribution) and runs in a
fresh subprocess (bench/harness.py) so peak memory is its own, measured over one step after the
timed ones by the harness: on CUDA ``torch.cuda.max_memory_allocated`` growth, on CPU the resident
high-water growth above the model, inputs and warm code paths. Defaults take
about a minute or two on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

CONTENDERS = ["padded (TRL)", "packed + logits", "packed + fused"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--pairs", type=int, default=8, help="pairs per step (same pairs for every contender)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompt-median", type=float, default=48.0)
    p.add_argument("--response-median", type=float, default=64.0)
    p.add_argument("--sigma", type=float, default=0.9, help="log-normal sigma (tail weight) of lengths")
    p.add_argument("--max-len", type=int, default=768, help="cap per prompt and per response")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def make_pairs(args):
    """(steps + 1) lists of ``pairs`` (prompt, chosen, rejected) id lists, log-normal lengths."""
    import random

    rng = random.Random(args.seed)

    def length(median):
        return max(1, min(args.max_len, int(round(rng.lognormvariate(math.log(median), args.sigma)))))

    def ids(n):
        return [rng.randrange(3, args.vocab) for _ in range(n)]

    return [
        [
            (
                ids(length(args.prompt_median)),
                ids(length(args.response_median)) + [2],
                ids(length(args.response_median)) + [2],
            )
            for _ in range(args.pairs)
        ]
        for _ in range(args.steps + 1)
    ]


def build_model(args, torch):
    """The seeded random Llama of ``args`` (``lrdpo_fast.model.tiny.tiny_causal_lm``), train mode."""
    from lrdpo_fast.model.tiny import tiny_causal_lm

    heads = max(2, args.hidden // 32)
    model = tiny_causal_lm(
        "llama",
        seed=args.seed,
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=32,
        num_hidden_layers=args.layers,
        intermediate_size=args.hidden * 8 // 3,
        max_position_embeddings=4 * args.max_len,
    )
    return model.to(device=args.device, dtype=getattr(torch, args.dtype)).train()


def padded_logps(model, batch, torch):
    """TRL's concatenated_forward: [2B, Lmax] right-padded, full logits, log_softmax + gather."""
    ids, mask, loss_mask = batch
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    labels = ids[:, 1:]
    lm = loss_mask[:, 1:]
    tok = torch.gather(logits.log_softmax(-1), 2, labels.clamp_min(0)[..., None]).squeeze(-1)
    return (tok * lm).sum(-1), lm.sum(-1)


def padded_batch(pairs, device, torch):
    seqs = [(p, r) for p, c, rj in pairs for r in (c, rj)]
    # TRL concatenates all chosen first, then all rejected
    seqs = seqs[0::2] + seqs[1::2]
    L = max(len(p) + len(r) for p, r in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.int64)
    mask = torch.zeros(len(seqs), L, dtype=torch.int64)
    loss_mask = torch.zeros(len(seqs), L, dtype=torch.int64)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        mask[i, :n] = 1
        loss_mask[i, len(p) : n] = 1
    return ids.to(device), mask.to(device), loss_mask.to(device)


def worker(spec: dict) -> dict:
    """Harness entry (bench/harness.py): one contender in this fresh process."""
    return run_worker(argparse.Namespace(**spec["args"]), spec["name"])


def run_worker(args, name):
    import torch

    from bench.harness import peak_growth

    torch.set_num_threads(args.threads)
    from lrdpo_fast.data.packing import pack_pairs, split_pairs
    from lrdpo_fast.data.records import PairExample
    from lrdpo_fast.model.packed import lm_head_params, model_sequence_logprobs, packed_hidden_states
    from lrdpo_fast.ops.losses import lrdpo_loss

    model = build_model(args, torch)
    steps = make_pairs(args)
    real_tokens = [sum(2 * len(p) + len(c) + len(r) for p, c, r in s) for s in steps]
    computed = []

    def step(pairs):
        if name == "padded (TRL)":
            batch = padded_batch(pairs, args.device, torch)
            computed.append(batch[0].numel())
            logps, lengths = padded_logps(model, batch, torch)
            b = len(pairs)
            cw, cl, lw, ll = logps[:b], logps[b:], lengths[:b], lengths[b:]
        else:
            packed = pack_pairs([PairExample(list(p), list(c), list(r)) for p, c, r in pairs]).to(args.device)
            computed.append(packed.num_tokens)
            if name == "packed + fused":
                logps, lengths = model_sequence_logprobs(model, packed)
            else:
                hidden = packed_hidden_states(model, packed)
                w, _ = lm_head_params(model)
                logp = (hidden @ w.t()).float().log_softmax(-1)
                lab = packed.labels
                tok = logp.gather(1, lab.clamp_min(0)[:, None]).squeeze(1) * (lab != -100)
                cu = packed.cu_seqlens.long()
                seq = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=tok.device), cu[1:] - cu[:-1])
                logps = tok.new_zeros(cu.numel() - 1).index_add(0, seq, tok)
                lengths = packed.response_lengths
            (cw, cl), (lw, ll) = split_pairs(logps), split_pairs(lengths)
        zeros = torch.zeros_like(cw).detach()
        loss, _ = lrdpo_loss(cw, cl, zeros, zeros, lw, ll, beta=0.1, alpha=0.1)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    step(steps[0])  # warm-up
    sync()
    t0 = time.perf_counter()
    for s in steps[1:]:
        step(s)
    sync()
    dt = time.perf_counter() - t0
    # peak memory of one more step over the model, inputs and warm code paths (the harness's way)
    peak = peak_growth(lambda: step(steps[-1]), args.device)["peak_bytes"]
    return {
        "name": name,
        "tokens_per_s": sum(real_tokens[1:]) / dt,
        "seconds": dt,
        "peak_mib": peak / 2**20,
        "real_tokens": sum(real_tokens[1:]),
        "computed_tokens": sum(computed[1 : len(steps)]),
    }


def main(argv=None):
    args = parse_args(argv)
    if not __package__:  # run as a script (python bench/bench_packing.py): the repo root for `bench`
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.harness import run_isolated

    rows = []
    for name in CONTENDERS:
        t0 = time.time()
        r = run_isolated("bench.bench_packing:worker", {"args": vars(args), "name": name}, timeout=1800)
        if "tokens_per_s" not in r:
            print(f"{name}: failed ({r.get('status')})", file=sys.stderr)
            continue
        rows.append(r)
        print(f"# {name}: done in {time.time() - t0:.1f} s", file=sys.stderr)
    lengths = [2 * len(p) + len(c) + len(r) for s in make_pairs(args)[1:] for p, c, r in s]
    print(
        f"\n{args.device}, {args.dtype}, Llama d={args.hidden} x {args.layers} layers, V={args.vocab}, "
        f"{args.pairs} pairs/step x {args.steps} steps, pair tokens median {sorted(lengths)[len(lengths) // 2]} "
        f"max {max(lengths)} (log-normal, sigma {args.sigma})\n"
    )
    print("| layout | real tokens/s | speed-up | peak memory (MiB) | computed tokens | padding |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = next((r for r in rows if r["name"] == CONTENDERS[0]), None)
    for r in rows:
        speed = r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
        pad = 1 - r["real_tokens"] / r["computed_tokens"]
        print(
            f"| {r['name']} | {r['tokens_per_s']:.0f} | {speed:.2f}x | {r['peak_mib']:.0f} | "
            f"{r['computed_tokens']} | {pad:.0%} |"
        )


if __name__ == "__main__":
    main()
