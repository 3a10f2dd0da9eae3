"""The loop comparison's verdict and loop.md (``bench/bench_loop.py`` runs it): end to end first
(a whole ``--iterations`` run of ``lf.iterate`` against the scripted pipeline run as many times),
then per phase, for every lrdpo-fast variant."""

from __future__ import annotations

GOAL_SPEEDUP = 4.0
MIB = 2**20
PHASES = ("sample", "score", "pairs", "train")


def _variant(o: dict, iterations: int) -> dict:
    ph = o["phases"]
    busy = sum(sum(v or 0 for v in p.values()) for p in ph)
    return {
        "startup_s": o["process"]["wall_s"] - busy,
        "first_sample_s": o.get("first_sample_s"),
        # after the first sample, outside every phase: the syncs (load_weights + verify), summary, exit
        "between_phases_s": o["process"]["wall_s"] - busy - (o.get("first_sample_s") or 0.0),
        "train_beyond_training_s": o.get("train_beyond_training_s"),
        "enforce_eager": (o.get("engine") or {}).get("enforce_eager"),
        "phases": ph,
        "later_iteration_s": sum(v or 0 for v in ph[1].values()) if len(ph) > 1 else None,
        "run_s": o["process"]["wall_s"],
        "peak_rss_bytes": o["process"]["peak_rss_bytes"],
    }


def table(res: dict) -> dict:
    """Both sides' numbers and the verdicts (None where a side failed). The scripted pipeline
    runs one iteration; its run of ``iterations`` is that many times it (each iteration repeats
    the same three programs)."""
    s, it = res.get("scripted", {}), res["config"]["iterations_lrdpo_fast"]
    out: dict = {"variants": {}}
    if all(s.get(k, {}).get("status") == "ok" for k in ("sample", "score", "train")):
        walls = {k: s[k]["process"]["wall_s"] for k in ("sample", "score", "train")}
        out["scripted"] = {
            **{f"{k}_s": v for k, v in walls.items()},
            "iteration_s": sum(walls.values()),
            "run_s": it * sum(walls.values()),
            "peak_rss_bytes": max(s[k]["process"]["peak_rss_bytes"] for k in ("sample", "score", "train")),
        }
    for name, o in (res.get("variants") or {}).items():
        if o.get("status") != "ok":
            continue
        v = _variant(o, it)
        if "scripted" in out:
            sc = out["scripted"]
            v["speedup_run"] = sc["run_s"] / v["run_s"]
            v["speedup_later"] = sc["iteration_s"] / v["later_iteration_s"] if v["later_iteration_s"] else None
            v["memory_ratio"] = v["peak_rss_bytes"] / sc["peak_rss_bytes"]
            v["goal_time"] = v["speedup_run"] >= GOAL_SPEEDUP
            v["goal_memory"] = v["memory_ratio"] <= 1.0
        out["variants"][name] = v
    return out


def _row(label: str, cells: list) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def render(res: dict) -> str:
    meta, cfg, t = res["meta"], res["config"], res["table"]
    it = cfg["iterations_lrdpo_fast"]
    lines = [
        f"# The loop end to end: lrdpo-fast `lf.iterate` vs the scripted pipeline, {it} iterations",
        "",
        "Reproduce: `python -m bench.bench_loop` (or `python -m bench --only loop`); raw numbers in loop.json.",
        "",
        f"Device: **{meta['device_name']}** ({cfg['threads']} torch threads, {meta['host_cpus']} CPUs visible, "
        f"shared with other jobs: compare within this run); load {res.get('load', 'not recorded')}; commit "
        f"`{meta['git_commit']}`; {meta['date_utc']}. torch {meta['versions'].get('torch')}, vllm "
        f"{res.get('vllm_version')}, transformers {meta['versions'].get('transformers')}, trl "
        f"{meta['versions'].get('trl')}.",
        "",
        f"{cfg['parameters'] / 1e6:.1f}M-parameter Llama (fp32), {cfg['prompts']} prompts x {cfg['n']} samples x "
        f"at most {cfg['max_new_tokens']} tokens (temperature 1), rule reward, best/worst pairs, DPO beta "
        f"{cfg['beta']} (lrdpo-fast: LR-DPO alpha {cfg['alpha']}), lr {cfg['learning_rate']}, "
        f"{cfg['pairs_per_step']} pairs per step. Scripted: three fresh processes per iteration (vLLM engine on "
        "policy_i from disk, vLLM's defaults; scoring + pairs; TRL DPOTrainer with the reference loaded from disk, "
        f"save_pretrained), measured for one iteration, x{it} for the run. lrdpo-fast: one process per variant "
        f"running `lf.iterate` for {it} iterations (process wall, launch to exit). Memory: peak resident set of "
        "each process tree (the pipeline's = its largest program's).",
        "",
    ]
    sc, vs = t.get("scripted"), t.get("variants") or {}
    if sc is None or not vs:
        lines.append(f"- a side failed: scripted {sc is not None}, lrdpo-fast variants {sorted(vs)}")
        return "\n".join(lines) + "\n"
    names = list(vs)
    lines += [
        _row("", ["scripted"] + [f"lrdpo-fast `{n}`" for n in names]),
        "|---|" + "---:|" * (1 + len(names)),
        _row(
            f"**{it}-iteration run, end to end (s)**",
            [f"**{sc['run_s']:.1f}**"] + [f"**{vs[n]['run_s']:.1f}** ({vs[n]['speedup_run']:.2f}x)" for n in names],
        ),
        _row(
            "start-up: launch to the first sample (s)",
            ["(each program)"] + [f"{vs[n]['first_sample_s']:.1f}" for n in names],
        ),
        _row(
            "between phases: syncs, summary, exit (s)",
            ["(none)"] + [f"{vs[n]['between_phases_s']:.1f}" for n in names],
        ),
        _row(
            "train phase beyond training: set-up, save, digest (s, per iteration)",
            ["(in train)"] + [" / ".join(f"{x:.1f}" for x in vs[n]["train_beyond_training_s"] or []) for n in names],
        ),
        _row("engine compiled", ["yes (vLLM default)"] + [("no" if vs[n]["enforce_eager"] else "yes") for n in names]),
    ]
    for i in range(it):
        for ph, sk in (("sample", "sample_s"), ("score", "score_s"), ("pairs", None), ("train", "train_s")):
            cell = f"{sc[sk]:.1f}" if sk else "(in score)"
            lines.append(_row(f"iteration {i}: {ph}", [cell] + [f"{vs[n]['phases'][i][ph]:.1f}" for n in names]))
    lines += [
        _row(
            "later iteration (phases, s)",
            [f"{sc['iteration_s']:.1f}"]
            + [f"{vs[n]['later_iteration_s']:.1f} ({vs[n]['speedup_later']:.2f}x)" for n in names],
        ),
        _row(
            "peak memory (MiB)",
            [f"{sc['peak_rss_bytes'] / MIB:.0f}"] + [f"{vs[n]['peak_rss_bytes'] / MIB:.0f}" for n in names],
        ),
        "",
        "Goals (the run end to end >= 4x the scripted pipeline at no more peak memory):",
    ]
    for n in names:
        v = vs[n]
        lines.append(
            f"- `{n}`: {v['speedup_run']:.2f}x end to end **{'PASS' if v['goal_time'] else 'FAIL'}**, memory "
            f"{v['memory_ratio']:.2f}x **{'PASS' if v['goal_memory'] else 'FAIL'}**"
        )
    if res.get("note"):
        lines += ["", f"Note: {res['note']}"]
    return "\n".join(lines) + "\n"
