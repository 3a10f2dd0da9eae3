"""Comparison 2: the loss kernel over token (N) and vocabulary (V) sweeps, plotted against the
roofline 6*N*d*V / (measured matmul FLOP/s)."""

from __future__ import annotations

from collections.abc import Callable

from .kernel import run_matrix


def sweep_sizes(sc: dict) -> dict[str, list[tuple[int, int, int]]]:
    return {
        "N": [(n, sc["N"]["d"], sc["N"]["V"]) for n in sc["N"]["values"]],
        "V": [(sc["V"]["N"], sc["V"]["d"], v) for v in sc["V"]["values"]],
    }


def run_scaling(
    prof: dict, *, isolate: bool = True, log: Callable[[str], None] = print, contenders: list[str] | None = None
) -> dict:
    sc = prof["scaling"]
    sweeps = sweep_sizes(sc)
    sizes = list(dict.fromkeys(sweeps["N"] + sweeps["V"]))  # each distinct size once
    log(
        f"scaling: N in {sc['N']['values']} (V={sc['N']['V']}), V in {sc['V']['values']} (N={sc['V']['N']}), "
        f"d={sc['N']['d']}"
    )
    rows = run_matrix(
        prof,
        contenders or sc["contenders"],
        sizes,
        warmup=sc["warmup"],
        repeats=sc["repeats"],
        isolate=isolate,
        log=log,
    )
    return {
        "config": {
            "N": sc["N"],
            "V": sc["V"],
            "warmup": sc["warmup"],
            "repeats": sc["repeats"],
            "dtype": prof["dtype"],
        },
        "sweeps": {name: [list(s) for s in sz] for name, sz in sweeps.items()},
        "rows": rows,
    }
