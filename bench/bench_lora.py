"""LoRA against full fine-tuning (issue 25): peak memory and step time of the lrdpo-fast Trainer on
the same model and pairs, with ``TrainConfig.lora`` (r=16, all-linear) and without it.

``python -m bench.bench_lora [--hidden 768] [--layers 8] [--vocab 32000] [--pairs-per-step 2]
[--repeats 5] [--rank 16] [--out DIR]`` (also ``python -m bench --only lora``).

The model: a random-init Llama (bench/train_data.py's tokenizer and long-tailed pairs; hidden 768,
12 heads, MLP 2048, 8 layers, V=32000, untied head: 106M parameters, fp32), large enough that the
weights, their gradients and AdamW's two moments dominate the memory. Every step trains on the
same ``--pairs-per-step`` pairs (one step is one epoch), so the steps do equal work and their spread
is the machine's, not the batches'. Each contender runs twice,
each time in a fresh process (bench/harness.py): a timing process (bench/timing.py: one warm-up
optimizer step, then the median of ``--repeats``) and a memory process (bench/memory.py: peak RSS
growth over the process after the model, tokenizer and pairs are built, through the Trainer's
set-up, reference precompute and two steps), apart because the memory probe changes malloc's
settings. Also recorded: trainable parameters, the optimizer state's bytes, and whether every
trainable parameter is an adapter. Goal: LoRA's peak drops by at least the AdamW state of the
weights it freezes (2 moments x 4 bytes x frozen parameters). Writes lora.json and lora.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONTENDERS = {"full": "full fine-tuning", "lora": "LoRA r={r}, all-linear"}
ADAM_BYTES = 2 * 4  # exp_avg + exp_avg_sq, fp32, per trainable parameter
MIB = 2**20


def build(spec: dict):
    """(model, tokenizer, pairs) of the seeded set-up: the same for every contender."""
    from bench.train_data import build_pairs, build_tokenizer
    from lrdpo_fast.model.tiny import tiny_causal_lm

    s = spec["shape"]
    heads = s["hidden"] // 64
    model = tiny_causal_lm(
        "llama",
        seed=0,
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=4096,
    )
    model.config.use_cache = False
    pairs = build_pairs(spec["pairs_per_step"], seed=0, tiny=s.get("tiny_pairs", False), vocab_size=s["vocab"])
    return model, build_tokenizer(s["vocab"]), pairs


def train_config(spec: dict, out_dir: str):
    """The Trainer's settings: the same for both contenders but ``lora``."""
    from lrdpo_fast.train.config import TrainConfig

    lora = None
    if spec["contender"] == "lora":
        lora = {"r": spec["rank"], "lora_alpha": 2 * spec["rank"], "target_modules": "all-linear"}
    return TrainConfig(
        beta=0.1,
        learning_rate=1e-5,
        lr_scheduler="constant",
        pairs_per_step=spec["pairs_per_step"],
        max_tokens_per_batch=4096,
        seed=0,
        device="cpu",
        dtype="fp32",
        output_dir=out_dir,
        progress=False,
        plot=False,
        save_final=False,
        lora=lora,
    )


def _optimizer_bytes(optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: step, exp_avg, exp_avg_sq)."""
    return sum(
        v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values() if hasattr(v, "numel")
    )


def _params(trainer, base_params: int) -> dict:
    """Trainable parameters, how many of them are not LoRA adapters, and the frozen base weights."""
    named = list(trainer.model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    return {
        "base_params": base_params,
        "trainable_params": sum(p.numel() for _, p in trainable),
        "trainable_non_adapter": [n for n, _ in trainable if "lora_" not in n],
        "frozen_params": sum(p.numel() for _, p in named if not p.requires_grad),
        "optimizer_state_bytes": _optimizer_bytes(trainer.optimizer),
    }


def contender_cell(spec: dict) -> dict:
    """Worker (a fresh process): build the set-up, then ``spec["phase"]`` "time" (warm-up step,
    median of ``repeats`` steps) or "memory" (peak RSS growth of set-up + two steps)."""
    import peft  # noqa: F401 - imported before the memory baseline in both contenders

    from bench.harness import peak_growth, time_step
    from lrdpo_fast.train.trainer import Trainer

    model, tokenizer, pairs = build(spec)
    base_params = sum(p.numel() for p in model.parameters())
    memory_phase = spec["phase"] == "memory"
    state: dict = {}

    def work():
        state["trainer"] = t = Trainer(model, tokenizer, pairs, train_config(spec, tmp))
        t.setup()
        state["timing"] = time_step(t.train_step, "cpu", 1, 1 if memory_phase else spec["repeats"])

    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        out = {"contender": spec["contender"], "phase": spec["phase"], "status": "ok"}
        if memory_phase:
            out["memory"] = peak_growth(work, "cpu", isolated=spec.get("isolated", True))
        else:
            work()
            out["timing"] = state["timing"]
    out.update(_params(state["trainer"], base_params), tokens=sum(e.num_tokens for e in state["trainer"].examples))
    return out


def run_contender(spec: dict, in_process: bool = False) -> dict:
    """Both phases of one contender, each in its own process (or here with ``in_process``)."""
    from bench.harness import run_isolated

    rows = {}
    for phase in ("time", "memory"):
        cell = spec | {"phase": phase, "isolated": not in_process}
        rows[phase] = run_isolated("bench.bench_lora:contender_cell", cell, timeout=900, in_process=in_process)
        if rows[phase].get("status") != "ok":
            return {"contender": spec["contender"], "status": f"{phase}: {rows[phase].get('status')}"}
    return rows["memory"] | {"timing": rows["time"]["timing"]}


def verdict(rows: dict) -> dict:
    """The memory drop LoRA buys and the goal: at least the AdamW state of the frozen weights."""
    full, lora = rows.get("full", {}), rows.get("lora", {})
    if full.get("status") != "ok" or lora.get("status") != "ok":
        return {"status": "n/a: a contender failed", "passed": False}
    drop = full["memory"]["peak_bytes"] - lora["memory"]["peak_bytes"]
    need = ADAM_BYTES * lora["frozen_params"]
    return {
        "status": "ok",
        "drop_bytes": drop,
        "need_bytes": need,
        "passed": drop >= need,
        "speed_ratio": lora["timing"]["median_s"] / full["timing"]["median_s"],
        "fastest_ratio": lora["timing"]["min_s"] / full["timing"]["min_s"],
    }


def load() -> dict:
    """The machine's load now: 1/5/15-minute averages and ``uptime``'s line."""
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "uptime": up}


def goal_line(goal: dict) -> str:
    """PASS/FAIL with the numbers."""
    if goal["status"] != "ok":
        return f"**FAIL** ({goal['status']})"
    word = "PASS" if goal["passed"] else "FAIL"
    return (
        f"Goal (LoRA's peak drops by at least the AdamW state of the frozen weights, 2 x 4 bytes x frozen "
        f"parameters): drop {goal['drop_bytes'] / MIB:.0f} MiB, needed {goal['need_bytes'] / MIB:.0f} MiB: **{word}**"
    )


def _noisy(load_1m: float, cpus: int) -> str:
    """A warning when the load exceeded the cores: step times then carry the other work's share."""
    if load_1m <= cpus:
        return ""
    return (
        " The load exceeded the cores, so the step times are noisy (see the spread of the timed steps) and "
        "their ratio is rough; RSS does not depend on the load."
    )


def render(res: dict) -> str:
    """lora.md: provenance, machine and load, the table, the goal line and what it means."""
    cfg, meta, rows, goal = res["config"], res["meta"], res["rows"], res["goal"]
    s, (l0, l1) = cfg["shape"], (res["load"]["start"], res["load"]["end"])
    lines = [
        "# LoRA against full fine-tuning (issue 25)",
        "",
        f"`python -m bench.bench_lora` (or `python -m bench --only lora`): the lrdpo-fast Trainer, fp32, "
        f"{meta['device_name']} ({meta['host_cpus']} cores, {meta['torch_threads']} torch threads), commit "
        f"`{meta['git_commit'][:12]}`, {meta['date_utc']}. Random-init Llama, hidden {s['hidden']}, {s['layers']} "
        f"layers, MLP {s['intermediate']}, V={s['vocab']} untied: {cfg['base_params'] / 1e6:.1f}M parameters; "
        f"{cfg['n_pairs']} seeded long-tailed pairs ({cfg['tokens']} tokens), all of them in every step, "
        "reference log-probs precomputed (LoRA: the same model with its adapters off).",
        "",
        f"Machine load (shared; another developer's tests ran beside it): 1-minute load average {l0['loadavg'][0]} at "
        f"the start, {l1['loadavg'][0]} at the end (`uptime`: `{l0['uptime']}` / `{l1['uptime']}`)."
        + _noisy(max(l0["loadavg"][0], l1["loadavg"][0]), meta["host_cpus"]),
        "",
        "| contender | trainable params | optimizer state (MiB) | peak RSS growth (MiB) | step time, median (s) "
        "| steps timed (s) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, r in rows.items():
        name = CONTENDERS[key].format(r=cfg["rank"])
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')} | | | | |")
            continue
        times = ", ".join(f"{t:.2f}" for t in r["timing"]["times_s"])
        lines.append(
            f"| {name} | {r['trainable_params'] / 1e6:.2f}M | {r['optimizer_state_bytes'] / MIB:.1f} | "
            f"{r['memory']['peak_bytes'] / MIB:.0f} | {r['timing']['median_s']:.2f} | {times} |"
        )
    lines += ["", goal_line(goal), "", res["meaning"], ""]
    return "\n".join(lines)


def meaning(res: dict) -> str:
    """Two or three sentences on what the numbers say."""
    goal = res["goal"]
    if goal["status"] != "ok":
        return "A contender failed; see lora.json for its reason."
    ratio, fastest = goal["speed_ratio"], goal["fastest_ratio"]
    speed = (
        "the backward skips the frozen weights' gradients and AdamW updates the adapters only"
        if fastest < 1
        else "LoRA buys memory here, not speed: the base's forward and its input gradients run either way and "
        "the adapters add small matmuls of their own"
    )
    return (
        f"LoRA's peak RSS growth is {goal['drop_bytes'] / MIB:.0f} MiB below full fine-tuning's; AdamW's two moments "
        f"of the frozen weights alone are {goal['need_bytes'] / MIB:.0f} MiB, and full fine-tuning also holds those "
        f"weights' gradients and the optimizer's temporaries. A LoRA step takes {ratio:.2f}x the full step's median "
        f"time ({fastest:.2f}x its fastest step): {speed}. Peak growth is counted over the process after the model "
        "is built, so the weights themselves, the same in both, are not in it."
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_lora", description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tiny-pairs", action="store_true", help="pairs an eighth as long (the smoke setting)")
    p.add_argument("--pairs-per-step", type=int, default=2, help="the pairs of every step (all of them)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up step")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--in-process", action="store_true", help="no worker processes (smoke test; memory less exact)")
    p.add_argument("--out", default=None, help="results folder (default bench/results/<device>)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Both contenders, the verdict and the load; the result record of lora.json."""
    from bench.env import metadata_record

    shape = {k: getattr(args, k) for k in ("hidden", "layers", "intermediate", "vocab", "tiny_pairs")}
    spec = {"shape": shape, "pairs_per_step": args.pairs_per_step, "repeats": args.repeats, "rank": args.rank}
    start = load()
    rows = {}
    for key in CONTENDERS:
        rows[key] = run_contender(spec | {"contender": key}, in_process=args.in_process)
        print(f"# {key}: {rows[key]['status']}", file=sys.stderr, flush=True)
    res = {"meta": metadata_record("cpu"), "config": spec | {"n_pairs": args.pairs_per_step}}
    res.update(rows=rows, goal=verdict(rows), load={"start": start, "end": load()})
    ok = [r for r in rows.values() if r.get("status") == "ok"]
    res["config"].update(base_params=ok[0]["base_params"] if ok else 0, tokens=ok[0]["tokens"] if ok else 0)
    res["meaning"] = meaning(res)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bench.env import REPO, device_slug

    res = run(args)
    text = render(res)
    print(text)
    out_dir = Path(args.out) if args.out else REPO / "bench" / "results" / device_slug("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lora.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out_dir / "lora.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
