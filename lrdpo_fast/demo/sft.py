"""Build the demo's start policy: supervised fine-tuning of a fresh ``make_model()`` on synthetic answers.

    python -m lrdpo_fast.demo.sft [--out DIR] [--steps N]     (= python scripts/train_demo_policy.py)

The data recipe (``sft_records``), all from ``SEED``:
- prompts: drawn with replacement from the TRAIN split of ``task`` (the eval split is never seen);
- style per answer: short 40%, medium 35%, long 25% (``STYLE_PROBS``);
- a wrong answer instead of the right one with a probability that grows with the style's length
  (short 5%, medium 15%, long 35%, ``ERROR_PROBS``): verbosity leaves room for error, so the
  judge's length bonus and correctness pull apart. A wrong answer is the right one with two
  neighbouring digits swapped, one digit changed, or the number copied unreversed.

Training: next-token cross-entropy on the response tokens (and EOS) only, the prompt masked; AdamW
(lr 3e-3, weight decay 0, betas 0.9/0.98), 100 warm-up steps then cosine decay to 0, batches of
``BATCH_SIZE`` fresh examples, gradient clipping at 1, fp32, torch pinned to 1 thread (steady under load, and the same bits every run); a fixed seed,
so on the same CPU the weights come out bit for bit the same (``sha256`` of the state dict is
printed). The result is saved with ``save_pretrained`` (fp32 safetensors) together with the
tokenizer and a generation config, by default into ``lrdpo_fast/demo/start_policy/``.

Sampled at temperature 1 the policy answers in all three styles, right and wrong; ``--steps``
trades its accuracy for time. The accuracy printed at the end is a quick check (400 samples at
temperature 1 with transformers on eval prompts); the demo measures with vLLM on 4000.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import time
from pathlib import Path

from . import task
from .policy import EOS_ID, PAD_ID, START_POLICY_DIR, make_model, make_tokenizer

SEED = 1234
STYLE_PROBS = {"short": 0.40, "medium": 0.35, "long": 0.25}
ERROR_PROBS = {"short": 0.05, "medium": 0.15, "long": 0.35}
STEPS = 1500
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WARMUP_STEPS = 100
THREADS = 1


def corrupt(answer: str, rng: random.Random, number: str) -> str:
    """A wrong 4-digit answer near ``answer`` (swap two neighbours, change a digit, or ``number`` itself)."""
    while True:
        kind = rng.randrange(3)
        digits = list(answer)
        if kind == 0:
            i = rng.randrange(3)
            digits[i], digits[i + 1] = digits[i + 1], digits[i]
        elif kind == 1:
            i = rng.randrange(4)
            digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
        else:
            digits = list(number)
        wrong = "".join(digits)
        if wrong != answer:
            return wrong


def sft_example(rng: random.Random, prompts: list[str]) -> tuple[str, str, str, bool]:
    """(prompt, response, style, correct) drawn with ``rng`` from the recipe above."""
    prompt = rng.choice(prompts)
    style = rng.choices(list(STYLE_PROBS), weights=list(STYLE_PROBS.values()))[0]
    correct = rng.random() >= ERROR_PROBS[style]
    answer = task.target(prompt)
    if not correct:
        answer = corrupt(answer, rng, task.parse_prompt(prompt))
    return prompt, task.format_answer(prompt, style, answer), style, correct


def sft_records(n: int, seed: int = SEED) -> list[dict]:
    """``n`` SFT examples as ``{"prompt", "response", "style", "correct"}`` dicts (deterministic)."""
    rng = random.Random(seed)
    prompts = task.make_prompts(task.pool_size("train"), seed=0, split="train")
    return [dict(zip(("prompt", "response", "style", "correct"), sft_example(rng, prompts))) for _ in range(n)]


def _batch(tokenizer, records):
    import torch

    seqs, labels = [], []
    for r in records:
        p = tokenizer(r["prompt"])["input_ids"]  # with BOS, as vLLM and the pair tokenizer do
        a = tokenizer(r["response"], add_special_tokens=False)["input_ids"] + [EOS_ID]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(s)] = 1
    return ids, mask, lab


def state_dict_sha256(model) -> str:
    """sha256 over the state dict's names and fp32 bytes, in order (to compare two builds)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_start_policy(
    out: str | Path = START_POLICY_DIR,
    *,
    steps: int = STEPS,
    seed: int = SEED,
    log_every: int = 100,
    quick_eval: int = 400,
) -> dict:
    """Run the recipe and save the policy to ``out``; returns a dict of what happened."""
    import torch
    from transformers import GenerationConfig

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    model = make_model(seed=seed)
    model.config._attn_implementation = "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    records = sft_records(steps * BATCH_SIZE, seed=seed)
    print(
        f"[sft] {n_params / 1e6:.3f}M-parameter Llama, {steps} steps x {BATCH_SIZE} examples "
        f"(seed {seed}; styles {STYLE_PROBS}; wrong answers {ERROR_PROBS})",
        flush=True,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        return 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    t0 = time.perf_counter()
    running = 0.0
    for step in range(steps):
        ids, mask, lab = _batch(tokenizer, records[step * BATCH_SIZE : (step + 1) * BATCH_SIZE])
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            k = (step % log_every) + 1
            print(
                f"[sft] step {step + 1}/{steps} loss {running / k:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True
            )
            running = 0.0
    seconds = time.perf_counter() - t0
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=96,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    digest = state_dict_sha256(model)
    print(f"[sft] trained in {seconds:.0f} s; saved to {out}; weights sha256 {digest}", flush=True)
    result = {"seconds": seconds, "sha256": digest, "out": str(out), "params": n_params}
    if quick_eval:
        result.update(sample_stats(model, tokenizer, n=quick_eval))
        print(
            f"[sft] quick check, {quick_eval} samples at temperature 1 on eval prompts (transformers): "
            f"accuracy {result['accuracy']:.3f}, mean length {result['mean_chars']:.1f} chars, "
            f"styles {result['styles']}",
            flush=True,
        )
    return result


def response_style(response: str) -> str:
    """Which template a response follows by its opening ("short", "medium", "long", or "other")."""
    if response.startswith("Let me"):
        return "long"
    if response.startswith("The answer"):
        return "medium"
    if response.isdigit():
        return "short"
    return "other"


def sample_stats(model, tokenizer, n: int = 400, seed: int = 0, batch: int = 200) -> dict:
    """Sample ``n`` eval-split answers at temperature 1 with transformers; accuracy, length, styles."""
    import torch

    prompts = task.make_prompts(n, seed=seed, split="eval")
    torch.manual_seed(seed)
    responses = []
    for i in range(0, n, batch):
        chunk = prompts[i : i + batch]
        enc = tokenizer(chunk, return_tensors="pt")  # all prompts are 6 tokens: no padding needed
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=96,
                pad_token_id=PAD_ID,
                eos_token_id=EOS_ID,
            )
        responses += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    styles: dict[str, int] = {}
    for r in responses:
        s = response_style(r)
        styles[s] = styles.get(s, 0) + 1
    return {
        "accuracy": task.true_accuracy(prompts, responses),
        "mean_chars": sum(map(len, responses)) / n,
        "styles": dict(sorted(styles.items())),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(START_POLICY_DIR), help="output folder (default: the shipped start_policy/)")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"SFT steps (default {STEPS})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"seed (default {SEED}; the shipped policy used it)")
    ap.add_argument("--quick-eval", type=int, default=400, help="samples for the closing accuracy check (0: none)")
    args = ap.parse_args(argv)
    train_start_policy(args.out, steps=args.steps, seed=args.seed, quick_eval=args.quick_eval)


if __name__ == "__main__":
    main()
