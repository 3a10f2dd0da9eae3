"""Markdown tables, goal verdicts and JSON for the results folder."""

from __future__ import annotations

import json
from pathlib import Path

from .contenders import PEERS

MIB = 2**20


def _ok(r: dict | None) -> bool:
    return bool(r) and r.get("status") == "ok"


def _t(r: dict) -> float:
    return r["timing"]["median_s"]


def _m(r: dict) -> float:
    return r["memory"]["peak_bytes"]


def flops(r: dict) -> float:
    """6*N*d*V: forward 2NdV + backward 4NdV, N = every token of the batch (prompt included)."""
    return 6.0 * r["N"] * r["d"] * r["V"]


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}x" if base > 0 else "-"


def kernel_table(rows: list[dict]) -> str:
    """One markdown table: time, memory, ratios to lrdpo-fast, effective TFLOP/s, check, notes."""
    base = next((r for r in rows if r["contender"] == "lrdpo_fast" and _ok(r)), None)
    out = [
        "| contender | time (ms) | time / lrdpo-fast | peak mem (MiB) | mem / lrdpo-fast | 6NdV TFLOP/s | check | notes |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if not _ok(r):
            out.append(f"| {r.get('name', r['contender'])} | {r.get('status', 'n/a')} | | | | | | |")
            continue
        t, m = _t(r), _m(r)
        tr = _ratio(t, _t(base)) if base else "-"
        mr = _ratio(m, _m(base)) if base else "-"
        chk = r.get("check", {}).get("verdict", "-")
        if r.get("check") and r["check"]["reference"] != "naive":
            chk += f" vs {r['check']['reference']}"
        notes = "; ".join(r.get("notes", []))
        out.append(
            f"| {r['name']} | {t * 1e3:.1f} | {tr} | {m / MIB:.1f} | {mr} | {flops(r) / t / 1e12:.3f} | {chk} | "
            f"{notes} |"
        )
    return "\n".join(out)


def scaling_table(rows: list[dict], sizes: list[list[int]], axis: str) -> str:
    """Time (ms) / peak MiB per contender (rows) and size (columns)."""
    keys = list(dict.fromkeys(r["contender"] for r in rows))
    idx = {"N": 0, "V": 2}[axis]
    head = "| contender | " + " | ".join(f"{axis}={s[idx]}" for s in sizes) + " |"
    out = [head, "|---|" + "---:|" * len(sizes)]
    for key in keys:
        cells = []
        name = key
        for s in sizes:
            r = next((x for x in rows if x["contender"] == key and [x["N"], x["d"], x["V"]] == list(s)), None)
            if r is not None:
                name = r.get("name", key)
            cells.append(
                f"{_t(r) * 1e3:.1f} ms / {_m(r) / MIB:.0f} MiB" if _ok(r) else (r or {}).get("status", "n/a")[:40]
            )
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def train_table(rows: list[dict]) -> str:
    base = next((r for r in rows if r.get("trainer") == "lrdpo_fast" and _ok(r)), None)
    out = [
        "| trainer | tokens/s (steady) | tokens/s / lrdpo-fast | tokens/s (end to end) | peak mem (MiB) | "
        "mem / lrdpo-fast |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if not _ok(r):
            out.append(f"| {r.get('name', r.get('trainer'))} | {r.get('status')} | | | | |")
            continue
        tr = _ratio(r["tokens_per_s"], base["tokens_per_s"]) if base else "-"
        mr = _ratio(_m(r), _m(base)) if base else "-"
        out.append(
            f"| {r['name']} | {r['tokens_per_s']:.0f} | {tr} | {r['end_to_end_tokens_per_s']:.0f} | "
            f"{_m(r) / MIB:.1f} | {mr} |"
        )
    return "\n".join(out)


def goals(kernel: dict | None, matmul: dict | None, device: str) -> list[str]:
    """PASS/FAIL lines for the kernel goals (CPU or GPU set)."""
    if not kernel:
        return []
    rows = kernel["rows"]
    cfg = kernel["config"]
    me = next((r for r in rows if r["contender"] == "lrdpo_fast"), None)
    peers = [r for r in rows if r["contender"] in PEERS and _ok(r)]
    size = f"N={cfg['N']}, d={cfg['d']}, V={cfg['V']}, {cfg['dtype']}"
    if not _ok(me):
        return [f"FAIL  lrdpo-fast did not run at {size}: {me.get('status') if me else 'missing'}"]
    lines = []
    if not peers:
        return [f"n/a   no peer ran at {size}: nothing to compare with"]
    fastest = min(peers, key=_t)
    leanest = min(peers, key=_m)
    gpu = device.startswith("cuda")
    if gpu:
        ok = all(_t(me) < _t(p) for p in peers)
        lines.append(
            f"{'PASS' if ok else 'FAIL'}  GPU time at {size}: lrdpo-fast {_t(me) * 1e3:.1f} ms vs fastest peer "
            f"{fastest['name']} {_t(fastest) * 1e3:.1f} ms (goal: faster than every peer)"
        )
        if matmul:
            eff = flops(me) / _t(me)
            scored = eff * me["scored_tokens"] / me["N"]
            frac = eff / matmul["flops_per_s"]
            lines.append(
                f"{'PASS' if frac >= 0.75 else 'FAIL'}  GPU throughput: 6NdV/t = {eff / 1e12:.0f} TFLOP/s = "
                f"{frac:.0%} of measured {matmul['dtype']} matmul {matmul['flops_per_s'] / 1e12:.0f} TFLOP/s (goal >= 75%;"
                f" N counts all tokens, counting only the {me['scored_tokens']} scored ones: "
                f"{scored / matmul['flops_per_s']:.0%})"
            )
    else:
        ok = _t(me) <= _t(fastest)
        lines.append(
            f"{'PASS' if ok else 'FAIL'}  CPU time at {size}: lrdpo-fast {_t(me) * 1e3:.0f} ms vs fastest peer "
            f"{fastest['name']} {_t(fastest) * 1e3:.0f} ms (goal: <= fastest peer)"
        )
    ok = _m(me) <= 1.2 * _m(leanest)
    lines.append(
        f"{'PASS' if ok else 'FAIL'}  {'GPU' if gpu else 'CPU'} peak memory at {size}: lrdpo-fast "
        f"{_m(me) / MIB:.1f} MiB vs leanest peer {leanest['name']} {_m(leanest) / MIB:.1f} MiB "
        f"(goal: <= 1.2x = {1.2 * _m(leanest) / MIB:.1f} MiB)"
    )
    lean = next((r for r in rows if r["contender"] == "lrdpo_fast_lean" and _ok(r)), None)
    if lean is not None and not gpu:  # the same kernel with small torch chunks: memory for time
        mem_ok, time_ok = _m(lean) <= 1.2 * _m(leanest), _t(lean) <= _t(fastest)
        lines.append(
            f"{'PASS' if mem_ok else 'FAIL'}  CPU peak memory with 16 MiB chunks: {_m(lean) / MIB:.1f} MiB "
            f"(goal <= {1.2 * _m(leanest) / MIB:.1f} MiB), at {_t(lean) * 1e3:.0f} ms "
            f"({'PASS' if time_ok else 'FAIL'} on time: pairs larger than a chunk rebuild their logits)"
        )
    bad = [r["name"] for r in rows if _ok(r) and "MISMATCH" in r.get("check", {}).get("verdict", "")]
    if bad:
        lines.append(f"FAIL  correctness: {', '.join(bad)} disagree with the reference beyond tolerance")
    return lines


def header(meta: dict, matmul: dict | None) -> str:
    v = meta["versions"]
    libs = ", ".join(
        f"{k} {v[k]}"
        for k in ("torch", "triton", "transformers", "trl", "liger_kernel", "cut_cross_entropy", "lrdpo_fast")
        if k in v
    )
    lines = [
        f"Device: **{meta['device_name']}** ({meta['device']}, {meta['torch_threads']} torch threads, "
        f"{meta['host_cpus']} CPUs visible); commit `{meta['git_commit']}`; {meta['date_utc']}.",
        f"Libraries: {libs}.",
    ]
    if matmul:
        med = matmul.get("median_flops_per_s")
        lines.append(
            f"Measured matmul throughput ({matmul['dtype']} {matmul['shape'][0]}^3, best of "
            f"{len(matmul['times_s'])}): {matmul['flops_per_s'] / 1e12:.3f} TFLOP/s"
            + (f" (median {med / 1e12:.3f})." if med else ".")
        )
    return "\n".join(lines)


def _provenance(section: dict, meta: dict) -> list[str]:
    """A line when a kept section came from another run than the header's."""
    m = section.get("meta") or {}
    if m and (m.get("git_commit"), m.get("date_utc")) != (meta.get("git_commit"), meta.get("date_utc")):
        return ["", f"(this section: commit `{m.get('git_commit')}`, {m.get('date_utc')})"]
    return []


def render(results: dict) -> str:
    """The whole markdown report of a results dict (sections that ran)."""
    meta, mm = results["meta"], results.get("matmul")
    parts = [
        f"# lrdpo-fast benchmark: {meta['device_slug']} (profile {results['profile']})",
        "",
        f"Reproduce: `python -m bench --profile {results['profile']}` (or `./dev bench --profile "
        f"{results['profile']}`); raw numbers in results.json.",
        "",
        header(meta, mm),
    ]
    if results.get("kernel"):
        c = results["kernel"]["config"]
        any_row = next((r for r in results["kernel"]["rows"] if "n_pairs" in r), {})
        batch = (
            (
                f" ({any_row['n_pairs']} pairs of long-tailed length, {any_row['scored_tokens']} scored response "
                "tokens; prompt and each sequence's last position are ignore_index)"
            )
            if any_row
            else ""
        )
        parts += [
            "",
            f"## Loss kernel: forward + backward, N={c['N']} tokens, d={c['d']}, V={c['V']}, {c['dtype']}",
            "",
            f"DPO objective from hidden [N, d] and LM head [V, d]{batch}, gradients w.r.t. both, "
            "precomputed reference log-probs. Time: median of "
            f"{c['repeats']} after {c['warmup']} warm-up. Peak memory: growth over the inputs (gradients "
            "included) in a fresh worker process per contender. Ratios > 1 mean lrdpo-fast is better. "
            "6NdV TFLOP/s counts all N tokens. Check: max relative error of the loss and sampled dH/dW rows "
            "vs the naive contender (vs the float64 reference of tests/reference.py where the row says so).",
            "",
            kernel_table(results["kernel"]["rows"]),
            *_provenance(results["kernel"], meta),
        ]
    if results.get("goals"):
        parts += ["", "## Goals", "", "```", *results["goals"], "```"]
    if results.get("scaling"):
        s = results["scaling"]
        parts += [
            "",
            "## Scaling (time / peak memory)",
            "",
            "Token sweep:",
            "",
            scaling_table(s["rows"], s["sweeps"]["N"], "N"),
            "",
            "Vocabulary sweep:",
            "",
            scaling_table(s["rows"], s["sweeps"]["V"], "V"),
            "",
            "Plots: scaling_N.png, scaling_V.png (dashed: roofline 6NdV / measured matmul FLOP/s).",
            *_provenance(s, meta),
        ]
    if results.get("train"):
        t = results["train"]
        any_row = next((r for r in t["rows"] if "params_m" in r), {})
        model = f"{any_row['params_m']}M-parameter Llama, " if any_row else ""
        parts += [
            "",
            f"## Train step end to end ({model}{t['config']['n_pairs']} long-tailed pairs, "
            f"{t['config']['pairs_per_step']} pairs/step, {t['config']['epochs']} epoch)",
            "",
            "Same model init, tokenizer, pairs, learning rate, precision and precomputed reference for "
            "both trainers. Steady tokens/s: real (unpadded) tokens through the model's training forwards "
            "between the first and the last optimizer step; end to end: the epoch's tokens over trainer "
            "construction + train() (tokenization and reference precompute included). Peak memory: growth "
            "over the built model and data.",
            "",
            train_table(t["rows"]),
            *_provenance(t, meta),
        ]
    for key in STANDALONE_TITLES:
        if results.get(key):
            parts += ["", *standalone_section(key, results[key], meta)]
    return "\n".join(parts) + "\n"


STANDALONE_TITLES = {
    "sampler": "vLLM sampler (bench/bench_sampler.py)",
    "implicit_reward": "Implicit reward (bench/bench_implicit_reward.py)",
    "loop": "The loop end to end (bench/bench_loop.py)",
    "loop-shapes": "The loop at Qwen2.5-0.5B's width and vocabulary (bench/bench_loop_shapes.py)",
    "eval": "Evaluation cost per iteration (bench/bench_eval.py)",
    "lora": "LoRA against full fine-tuning (bench/bench_lora.py)",
}


def standalone_section(key: str, res: dict, meta: dict) -> list[str]:
    """The markdown of a standalone script's results (its own renderer, headings one level down)."""
    title = f"## {STANDALONE_TITLES[key]}"
    if res.get("status") != "ok":
        return [title, "", str(res.get("status", "n/a"))]
    try:
        if key == "sampler":
            from .bench_sampler import report as render_md
        elif key == "implicit_reward":
            from .bench_implicit_reward import markdown as render_md
        elif key == "eval":
            from .bench_eval import render as render_md
        elif key == "loop-shapes":
            from .bench_loop_shapes import render as render_md
        elif key == "lora":
            from .bench_lora import render as render_md
        else:
            from .bench_loop import render as render_md
        body = render_md(res)
    except Exception as e:  # noqa: BLE001 - a renderer out of step with an old results.json
        body = f"(not rendered: {type(e).__name__}: {e}; see {key}.json)"
    lines = body.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    lines = [("#" + ln) if ln.startswith("#") else ln for ln in lines]
    while lines and not lines[0].strip():
        lines = lines[1:]
    return [title, "", *lines, *_provenance(res, meta)]


def write(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "results.md").write_text(render(results))
