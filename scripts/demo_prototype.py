"""PROTOTYPE of `lrdpo-fast demo` (issue 13): the iterative loop in miniature, to find settings.

NOT the demo command: it calls ``vllm.LLM`` directly and keeps everything in memory (no run
directory, no sampler class). It exists to prove that the effect shows within the time limits and
to pin the settings the real ``lrdpo-fast demo`` will use; once the sampler and the loop land, the
demo wires the same steps onto them.

From the same start policy (``lrdpo_fast/demo/start_policy``), runs the loop twice, alpha = 0
(iterative DPO) and alpha = ALPHA (iLR-DPO). Per iteration:
  1. sample K responses for each of P training prompts from the current policy (vLLM, in process,
     temperature 1, per-prompt seeds that depend on the seed, the iteration and the prompt index
     only, so both runs draw with the same random numbers);
  2. score them with the length-biased judge (``lrdpo_fast.demo.task.judge``);
  3. per prompt, chosen = best score, rejected = worst; truncated samples are dropped, and prompts
     whose best and worst tie;
  4. train with ``lf.Trainer`` (reference = the policy at the start of the iteration);
  5. sync the new weights into the engine in memory (``reload_weights`` + prefix-cache reset);
  6. measure true accuracy, judge reward and mean response length (tokens incl. EOS) on E
     held-out samples (eval prompts never seen in SFT or training; same seeds in both runs).
Row 0 is the start policy, measured once (both runs start from it).

    python scripts/demo_prototype.py            # full setting (3 iterations, 4000 eval samples)
    python scripts/demo_prototype.py --quick    # the reduced setting

Settings found (defaults here): beta 0.1, constant LR 1e-4, 2 epochs, AdamW, alpha 0.065 per token
(= per character), temperature 1, max 96 new tokens; full = 200 prompts x 6 samples per iteration
(32 pairs per step), eval 1000 held-out prompts x 4; quick = 100 prompts x 6 (16 pairs per step),
eval 500 x 4. Both: 3 iterations. vLLM eager (no compile), torch on 1 thread for sampling and for
training. Full setting, seed 0, shared 2-core AMD EPYC, 162 s in all (quick: 81 s):

    alpha  it  true_acc   judge  len_tok  pairs
      0.0   0    0.8137  0.9446    27.18      -
      0.0   1    0.8555  1.0122    32.34    199
      0.0   2    0.8878  1.0940    42.25    200
      0.0   3    0.9040  1.1609    52.44    200
    0.065   1    0.8655  0.9890    25.71    199
    0.065   2    0.9012  1.0215    25.04    200
    0.065   3    0.9240  1.0515    26.50    198

Seeds 0-2, full and quick: alpha 0 grows length +80..+100%; alpha 0.065 stays within -4.9..+2.1%
with accuracy 0.9..2.6 points above alpha 0's. alpha 0.05 drifted to +10.9% on one full seed,
alpha 0.08 shrank up to -8.2% (quick), alpha 0.1 -9% (full, seed 0); LR 2e-5 grew length only +7%.
"""
from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

# vLLM's CPU worker replaces torch.set_num_threads with a no-op when it starts, BEFORE its own attempt
# to drop to 1 thread for serving, so the engine silently keeps every core's thread: under load
# (other processes on the 2 cores) that costs 5 to 8x the CPU time per sample. Keep the real
# function: 1 thread while sampling, --threads while training.
_SET_THREADS = torch.set_num_threads

FULL = dict(iterations=3, prompts=200, k=6, eval_prompts=1000, eval_k=4, epochs=2, pairs_per_step=32)
QUICK = dict(iterations=3, prompts=100, k=6, eval_prompts=500, eval_k=4, epochs=2, pairs_per_step=16)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="PROTOTYPE of lrdpo-fast demo (see the module docstring)")
    ap.add_argument("--quick", action="store_true", help="the reduced setting")
    ap.add_argument("--alpha", type=float, default=0.065, help="alpha of the iLR-DPO run (per token)")
    ap.add_argument("--alphas", type=str, default=None, help="comma-separated alphas to run instead of 0,ALPHA")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pairs-per-step", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=None, help="training prompts per iteration")
    ap.add_argument("--k", type=int, default=None, help="samples per training prompt")
    ap.add_argument("--eval-prompts", type=int, default=None)
    ap.add_argument("--eval-k", type=int, default=None, help="samples per eval prompt")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LRDPO_DEMO_THREADS", "1")))
    ap.add_argument("--policy", type=str, default=None, help="start policy folder (default: the shipped one)")
    ap.add_argument("--compile", action="store_true",
                    help="let vLLM torch.compile the model (~30 s more at start on a fresh machine, no faster here)")
    ap.add_argument("--json", type=str, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def request_seed(seed: int, iteration: int, index: int) -> int:
    """Per-prompt vLLM seed: a function of (seed, iteration, prompt index) only (iteration 0 = eval)."""
    return (seed * 1_000_003 + iteration * 100_003 + index) % (2**31)


def sampling_params(n, seeds, temperature, max_new_tokens):
    from vllm import SamplingParams

    return [SamplingParams(n=n, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens, seed=s)
            for s in seeds]


def generate(llm, prompts, n, seeds, args, tokenizer):
    """list (per prompt) of list (n) of (text, token_ids, truncated).

    Checks that vLLM saw the prompt as the trainer will ([BOS] + one token per character) and that
    its text is the tokenizer's decoding of the sampled ids; raises when not."""
    outs = llm.generate(prompts, sampling_params(n, seeds, args.temperature, args.max_new_tokens), use_tqdm=False)
    for p, o in zip(prompts, outs):
        if list(o.prompt_token_ids) != tokenizer(p)["input_ids"]:
            raise RuntimeError(f"vLLM tokenized prompt {p!r} as {list(o.prompt_token_ids)}, the trainer would not")
        for c in o.outputs:
            if c.text != tokenizer.decode(list(c.token_ids), skip_special_tokens=True):
                raise RuntimeError(f"vLLM detokenized {list(c.token_ids)} as {c.text!r}")
    return [[(c.text, list(c.token_ids), c.finish_reason == "length") for c in o.outputs] for o in outs]


def check_tokenization(tokenizer, prompt, text, token_ids, truncated) -> bool:
    """True when the trainer's tokenization of (prompt, text) gives exactly the sampled tokens."""
    want = list(token_ids)
    got = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not truncated:
        got = got + [tokenizer.eos_token_id]
    return got == want


def evaluate(llm, args, task, tokenizer):
    prompts = task.make_prompts(args.eval_prompts, seed=10_000 + args.seed, split="eval")
    seeds = [request_seed(args.seed, 0, i) for i in range(len(prompts))]
    groups = generate(llm, prompts, args.eval_k, seeds, args, tokenizer)
    flat_p = [p for p, g in zip(prompts, groups) for _ in g]
    flat_r = [t for g in groups for (t, _, _) in g]
    lengths = [len(ids) for g in groups for (_, ids, _) in g]
    scores = task.judge(flat_p, flat_r)
    from lrdpo_fast.demo.sft import response_style

    styles = {}
    for r in flat_r:
        s = response_style(r)
        styles[s] = styles.get(s, 0) + 1
    return {
        "true_accuracy": task.true_accuracy(flat_p, flat_r),
        "judge_reward": sum(scores) / len(scores),
        "mean_response_length": sum(lengths) / len(lengths),
        "eval_samples": len(flat_r),
        "truncated": sum(tr for g in groups for (_, _, tr) in g),
        "styles": {k: round(v / len(flat_r), 3) for k, v in sorted(styles.items())},
    }


def build_pairs(prompts, groups, task, tokenizer):
    pairs, stats = [], {"prompts": len(prompts), "tie": 0, "too_few": 0, "truncated_samples": 0, "empty_samples": 0,
                    "token_mismatch": 0}
    for p, g in zip(prompts, groups):
        valid = []
        for text, ids, truncated in g:
            if truncated:
                stats["truncated_samples"] += 1
                continue
            if not text:  # EOS right away: nothing for the trainer to score
                stats["empty_samples"] += 1
                continue
            if not check_tokenization(tokenizer, p, text, ids, truncated):
                stats["token_mismatch"] += 1
                continue
            valid.append(text)
        if len(valid) < 2:
            stats["too_few"] += 1
            continue
        scores = task.judge([p] * len(valid), valid)
        best = max(range(len(valid)), key=lambda i: scores[i])
        worst = min(range(len(valid)), key=lambda i: scores[i])
        if scores[best] == scores[worst]:
            stats["tie"] += 1
            continue
        pairs.append({"prompt": p, "chosen": valid[best], "rejected": valid[worst]})
    stats["kept"] = len(pairs)
    if pairs:
        stats["chosen_chars"] = sum(len(x["chosen"]) for x in pairs) / len(pairs)
        stats["rejected_chars"] = sum(len(x["rejected"]) for x in pairs) / len(pairs)
    return pairs, stats


def sync(llm, model):
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(sd.items()), "is_checkpoint_format": True})
    llm.reset_prefix_cache()


def run(llm, tokenizer, start_path, alpha, args, row0, task, log):
    from transformers import LlamaForCausalLM

    import lrdpo_fast as lf

    model = LlamaForCausalLM.from_pretrained(start_path, dtype=torch.float32)
    sync(llm, model)
    rows = [dict(row0, iteration=0, alpha=alpha)]
    for it in range(1, args.iterations + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        prompts = task.make_prompts(args.prompts, seed=args.seed * 1000 + it, split="train")
        seeds = [request_seed(args.seed, it, i) for i in range(len(prompts))]
        groups = generate(llm, prompts, args.k, seeds, args, tokenizer)
        t_sample, c_sample = time.perf_counter() - t0, time.process_time() - c0
        pairs, pstats = build_pairs(prompts, groups, task, tokenizer)
        out_dir = tempfile.TemporaryDirectory(prefix="demo_proto_")
        cfg = lf.TrainConfig(
            beta=args.beta, alpha=alpha, learning_rate=args.lr, lr_scheduler="constant", num_epochs=args.epochs,
            pairs_per_step=args.pairs_per_step, seed=args.seed + it, device="cpu", backend="torch",
            output_dir=out_dir.name, save_final=False, plot=False, progress=False,
        )
        _SET_THREADS(args.threads)
        t1, c1 = time.perf_counter(), time.process_time()
        trainer = lf.Trainer(model, tokenizer, pairs, cfg)
        hist = trainer.train()
        model = trainer.model
        t_train, c_train = time.perf_counter() - t1, time.process_time() - c1
        out_dir.cleanup()
        _SET_THREADS(1)
        model.eval()
        sync(llm, model)
        t2, c2 = time.perf_counter(), time.process_time()
        ev = evaluate(llm, args, task, tokenizer)
        t_eval, c_eval = time.perf_counter() - t2, time.process_time() - c2
        row = dict(ev, iteration=it, alpha=alpha, pairs_kept=pstats["kept"], pair_stats=pstats,
                   train_loss_last=hist[-1]["loss"], train_margin_last=hist[-1]["rewards/margins"],
                   seconds={"sample": round(t_sample, 1), "train": round(t_train, 1), "eval": round(t_eval, 1)},
                   cpu_seconds={"sample": round(c_sample, 1), "train": round(c_train, 1), "eval": round(c_eval, 1)})
        rows.append(row)
        log(f"alpha={alpha} it={it} acc={ev['true_accuracy']:.4f} judge={ev['judge_reward']:.4f} "
            f"len={ev['mean_response_length']:.2f} pairs={pstats['kept']} styles={ev['styles']} pstats={pstats} "
            f"loss={hist[-1]['loss']:.3f} t={row['seconds']} cpu={row['cpu_seconds']}")
    return rows


def main(argv=None):
    args = parse_args(argv)
    for name in ("vllm", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from lrdpo_fast.demo import task
    from lrdpo_fast.demo.policy import start_policy_path

    t_all = time.perf_counter()
    start_path = str(args.policy or start_policy_path())

    c_all = time.process_time()

    def log(msg):
        print(f"[{time.perf_counter() - t_all:6.1f}s wall, {time.process_time() - c_all:6.1f}s cpu] {msg}", flush=True)

    from transformers import AutoTokenizer
    from vllm import LLM

    tokenizer = AutoTokenizer.from_pretrained(start_path)
    llm = LLM(start_path, dtype="float32", max_model_len=128, seed=args.seed, enforce_eager=not args.compile)
    _SET_THREADS(1)
    log(f"engine up; settings {vars(args)}")
    alphas = [float(a) for a in args.alphas.split(",")] if args.alphas else [0.0, args.alpha]
    row0 = evaluate(llm, args, task, tokenizer)
    row0.update(pairs_kept=None)
    log(f"start: {row0}")
    results = {}
    for alpha in alphas:
        results[alpha] = run(llm, tokenizer, start_path, alpha, args, row0, task, log)
    wall = time.perf_counter() - t_all
    print()
    print(f"{'alpha':>6} {'it':>3} {'true_acc':>9} {'judge':>7} {'len_tok':>8} {'pairs':>6}")
    for alpha, rows in results.items():
        for r in rows:
            print(f"{alpha:>6} {r['iteration']:>3} {r['true_accuracy']:>9.4f} {r['judge_reward']:>7.4f} "
                  f"{r['mean_response_length']:>8.2f} {str(r['pairs_kept'] or '-'):>6}")
    a0 = results.get(0.0)
    verdict = {}
    if a0 is not None and len(results) >= 2:
        alpha = [a for a in results if a != 0.0][0]
        aa = results[alpha]
        L0 = a0[0]["mean_response_length"]
        verdict = {
            "alpha0_length_growth": a0[-1]["mean_response_length"] / L0 - 1,
            "alpha_length_change": aa[-1]["mean_response_length"] / L0 - 1,
            "alpha_acc_minus_start": aa[-1]["true_accuracy"] - a0[0]["true_accuracy"],
            "alpha_acc_minus_alpha0": aa[-1]["true_accuracy"] - a0[-1]["true_accuracy"],
        }
        verdict["pass"] = (verdict["alpha0_length_growth"] >= 0.30 and abs(verdict["alpha_length_change"]) <= 0.10
                           and verdict["alpha_acc_minus_start"] > 0 and verdict["alpha_acc_minus_alpha0"] >= -0.01)
        print("verdict:", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in verdict.items()}))
    cpu = time.process_time() - c_all
    print(f"wall time {wall:.0f} s, process CPU time {cpu:.0f} s (engine start included; the CPU time is what "
          f"an idle machine would take, roughly, when the work runs on one thread)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": {str(a): r for a, r in results.items()},
                                               "verdict": verdict, "wall_s": wall, "cpu_s": cpu}, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
