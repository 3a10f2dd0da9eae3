"""What the sync check costs (issue 22 section 2): ``VLLMSampler.load_weights`` of a module with
``verify_sync`` off and on, and the check's two halves, on models of a real family's shape.

``python -m bench.bench_verify [--layers 2,24] [--repeats 5] [--out FILE]``

For each depth, a random-init Llama of Qwen2.5-0.5B's width and vocabulary (bench_loop_shapes'
``QWEN25_05B``: hidden 896, V=151936, tied; 24 layers is Qwen2.5-0.5B's depth, 494M parameters)
is saved once; one eager fp32 engine serves it and ``load_weights(module)`` (the loop's call)
syncs a second random model into it, ``--repeats`` times each way (median kept). The halves:
the engine's prompt log-probs of the 16-token probe (one vLLM request) and the given module's
own log-probs of the same tokens (``reference_probe_logprobs``: a forward through the fused
kernel). Goal (the issue's): the check under 10% of a verified sync on the CPU. Prints a
markdown table with the load; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

GOAL_SHARE = 0.10


def _median_s(fn, repeats: int) -> float:
    from bench.timing import time_step

    return time_step(fn, "cpu", warmup=0, repeats=repeats)["median_s"]


def measure(layers: int, repeats: int) -> dict:
    """Seconds of an unverified and a verified ``load_weights(module)`` at ``layers`` decoder
    layers, and of the check's engine and reference halves (medians of ``repeats``)."""
    import torch

    from bench.bench_loop_shapes import QWEN25_05B
    from lrdpo_fast.loop.sampler import VLLMSampler
    from lrdpo_fast.loop.sampler import verify as V
    from lrdpo_fast.loop.sampler.process import Threads
    from lrdpo_fast.model.tiny import tiny_causal_lm, word_tokenizer

    def model(seed: int):
        return tiny_causal_lm(
            "llama", seed=seed, dtype=torch.float32, num_hidden_layers=layers, max_position_embeddings=256, **QWEN25_05B
        )

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as folder:
        model(0).save_pretrained(folder)
        word_tokenizer(QWEN25_05B["vocab_size"]).save_pretrained(folder)
        new = model(1)
        sampler = VLLMSampler(folder, seed=0, enforce_eager=True, max_model_len=256, dtype="float32", quiet=True)
        try:
            ids = V.probe_ids(V._probe_vocab(sampler), getattr(sampler.tokenizer, "bos_token_id", None))
            with Threads(sampler._prepack_threads):  # as load_weights runs them
                sampler.verify_sync = False
                plain = _median_s(lambda: sampler.load_weights(new), repeats)
                engine = _median_s(lambda: sampler.probe_logprobs(ids), repeats)
                reference = _median_s(lambda: V.reference_probe_logprobs(ids, module=new), repeats)
                sampler.verify_sync = True
                verified = _median_s(lambda: sampler.load_weights(new), repeats)
        finally:
            sampler.close()
    return {
        "layers": layers,
        "parameters": sum(p.numel() for p in new.parameters()),
        "load_weights_unverified_s": plain,
        "load_weights_verified_s": verified,
        "engine_probe_s": engine,
        "reference_probe_s": reference,
        "share": (verified - plain) / verified,
    }


def render(rows: list[dict], load: tuple[float, float]) -> str:
    """The markdown table, the load and the verdict."""
    lines = [
        f"1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end (2 cores).",
        "",
        "| layers | parameters | sync, unverified (s) | sync, verified (s) | engine probe (s) | reference probe (s) "
        "| check's share |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layers']} | {r['parameters'] / 1e6:.0f}M | {r['load_weights_unverified_s']:.3f} | "
            f"{r['load_weights_verified_s']:.3f} | {r['engine_probe_s']:.3f} | {r['reference_probe_s']:.3f} | "
            f"{100 * r['share']:.0f}% |"
        )
    worst = max(r["share"] for r in rows)
    verdict = "PASS" if worst < GOAL_SHARE else "NOT MET"
    lines.append(f"\nlargest share {100 * worst:.0f}% (goal < {100 * GOAL_SHARE:.0f}%): **{verdict}**")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_verify", description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="2,24", help="comma list of decoder-layer counts")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    start = os.getloadavg()[0]
    rows = [measure(int(x), args.repeats) for x in args.layers.split(",")]
    text = render(rows, (start, os.getloadavg()[0]))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
