"""PNG plots of the scaling sweeps (matplotlib, Agg backend): time and peak memory against N and
against V, one line per contender, plus the roofline 6*N*d*V / (measured matmul FLOP/s)."""

from __future__ import annotations

from pathlib import Path


def plot_scaling(scaling: dict, matmul: dict | None, out_dir: Path, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis, idx in (("N", 0), ("V", 2)):
        sizes = [tuple(s) for s in scaling["sweeps"][axis]]
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
        keys = list(dict.fromkeys(r["contender"] for r in scaling["rows"]))
        for key in keys:
            pts = [
                r
                for r in scaling["rows"]
                if r["contender"] == key and (r["N"], r["d"], r["V"]) in sizes and r.get("status") == "ok"
            ]
            if not pts:
                continue
            pts.sort(key=lambda r: (r["N"], r["V"]))
            xs = [(r["N"], r["d"], r["V"])[idx] for r in pts]
            name = pts[0].get("name", key)
            style = dict(marker="o", linewidth=2.5 if key == "lrdpo_fast" else 1.5)
            ax_t.plot(xs, [r["timing"]["median_s"] * 1e3 for r in pts], label=name, **style)
            ax_m.plot(xs, [r["memory"]["peak_bytes"] / 2**20 for r in pts], label=name, **style)
        if matmul:
            xs = [s[idx] for s in sizes]
            ax_t.plot(
                xs,
                [6.0 * n * d * v / matmul["flops_per_s"] * 1e3 for (n, d, v) in sizes],
                "k--",
                label=f"roofline 6NdV / {matmul['flops_per_s'] / 1e12:.2f} TFLOP/s (all N tokens)",
            )
            scored = {(r["N"], r["d"], r["V"]): r["scored_tokens"] for r in scaling["rows"] if "scored_tokens" in r}
            if all(s in scored for s in sizes):
                ax_t.plot(
                    xs,
                    [6.0 * scored[(n, d, v)] * d * v / matmul["flops_per_s"] * 1e3 for (n, d, v) in sizes],
                    "k:",
                    label="roofline counting scored tokens only",
                )
        fixed = {"N": f"d={sizes[0][1]}, V={sizes[0][2]}", "V": f"N={sizes[0][0]}, d={sizes[0][1]}"}[axis]
        for ax, ylabel in ((ax_t, "forward+backward time (ms)"), (ax_m, "peak memory growth (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"{axis} ({'tokens' if axis == 'N' else 'vocabulary'}; {fixed})")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        ax_t.legend(fontsize=7)
        fig.suptitle(f"{title}: DPO loss kernel vs {axis}")
        fig.tight_layout()
        path = out_dir / f"scaling_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def plot_loop_scaling(res: dict, phases, path: Path) -> None:
    """bench/bench_loop_shapes.py's plot: one iteration's wall time (and each phase's) against the
    prompts per iteration, a line linear in prompts from the first size, the scripted point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {int(k): v for k, v in res["table"]["lrdpo_fast"].items() if "iteration_s" in v}
    xs = sorted(rows)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(xs, [rows[x]["iteration_s"] for x in xs], "o-", linewidth=2.5, label="lrdpo-fast iteration (phases)")
    for p in phases:
        ax.plot(xs, [rows[x][f"{p}_s"] for x in xs], ".--", linewidth=1, label=f"  {p}")
    if xs:
        ax.plot(xs, [rows[xs[0]]["iteration_s"] * x / xs[0] for x in xs], "k:", label="linear in prompts")
    sc = res["table"].get("scripted")
    if sc:
        ax.plot([res["config"]["scale"][0]], [sc["iteration_s"]], "s", color="C3", ms=9, label="scripted pipeline")
    cfg, shape = res["config"], res["config"]["shape"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs or cfg["scale"], [str(x) for x in xs or cfg["scale"]])
    ax.set_xlabel(f"prompts per iteration (x {cfg['n']} samples x {cfg['max_new_tokens']} tokens)")
    ax.set_ylabel("wall time per iteration (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    loads = [x["loadavg"][0] for x in res["load"]]
    ax.set_title(
        f"One lf.iterate iteration, Qwen2.5-0.5B shape d={shape['hidden_size']} V={shape['vocab_size']} {cfg['layers']} layers, "
        f"fp32\n{res['meta']['device_name']}, {cfg['threads']} threads, shared cores (load {min(loads):.1f}-"
        f"{max(loads):.1f})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
