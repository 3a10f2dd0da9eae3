"""One benchmark cell, run in a fresh process by bench/harness.py (``run(spec)``, through
bench/cells.py).

A kernel cell builds the seeded problem,
prepares one contender, warms it up, times it, measures its peak memory (bench/memory.py) and
saves sampled gradient rows for the correctness check; a train cell delegates to
bench/train_step.py. Failures become {"status": "n/a: reason"}, never a crash without a result.
"""

from __future__ import annotations

import gc
import traceback

import torch

from .harness import failure_reason as _reason


def _sample_rows(n: int, k: int, gen: torch.Generator, pool: torch.Tensor | None = None) -> torch.Tensor:
    if pool is not None:
        return pool[torch.randperm(pool.numel(), generator=gen)[:k]]
    return torch.randperm(n, generator=gen)[:k]


def save_check(path: str, p, loss, dh, dw) -> None:
    """Sampled rows of dH (scored tokens) and dW (label ids and random ids) plus norms, on CPU."""
    gen = torch.Generator().manual_seed(1234)
    scored = torch.nonzero(p.labels.cpu() != -100).flatten()
    rows_h = _sample_rows(p.n_tokens, 64, gen, scored)
    rows_w = torch.cat([_sample_rows(0, 32, gen, p.labels.cpu()[scored]), _sample_rows(p.weight.shape[0], 32, gen)])
    torch.save(
        {
            "loss": float(loss),
            "dh_rows": dh.detach().float().cpu()[rows_h],
            "dw_rows": dw.detach().float().cpu()[rows_w],
            "dh_norm": float(dh.detach().float().norm()),
            "dw_norm": float(dw.detach().float().norm()),
        },
        path,
    )


def kernel_cell(spec: dict, isolated: bool = True, phase: str = "all") -> dict:
    """phase "all": warm-up, timing, then memory + check; "time": warm-up and timing only;
    "memory": memory + check only (after a "time" phase of the same cell warmed this process)."""
    from .contenders import CONTENDERS, DISPLAY, Unavailable
    from .harness import peak_growth, time_step
    from .inputs import make_problem

    key, device = spec["contender"], spec["device"]
    out = {
        "contender": key,
        "name": DISPLAY.get(key, key),
        "N": spec["N"],
        "d": spec["d"],
        "V": spec["V"],
        "dtype": spec["dtype"],
        "device": device,
    }
    torch.manual_seed(0)
    p = make_problem(spec["N"], spec["d"], spec["V"], spec["dtype"], device, spec.get("seed", 0))
    out["n_pairs"], out["scored_tokens"] = p.n_pairs, p.scored_tokens
    try:
        c = CONTENDERS[key](p, device)
    except Unavailable as e:
        return {**out, "status": f"n/a: {e}"}
    except Exception as e:  # noqa: BLE001
        return {**out, "status": _reason(e), "traceback": traceback.format_exc(limit=4)}
    out["notes"] = c.notes
    try:
        if phase in ("all", "time"):
            out["timing"] = time_step(c.step, device, spec.get("warmup", 1), spec.get("repeats", 3))
        if phase in ("all", "memory"):
            c.zero_grad()
            last = {}
            out["memory"] = peak_growth(lambda: last.setdefault("loss", c.step()), device, isolated=isolated)
            if spec.get("check_path"):
                if c.check_fn is None:  # the measured step's loss and gradients are the check
                    loss, dh, dw = last["loss"], c.packed_grad_hidden(c.leaves[0].grad), c.leaves[1].grad
                else:
                    c.zero_grad()
                    loss, dh, dw = c.check()
                save_check(spec["check_path"], p, loss, dh, dw)
        c.zero_grad()
    except Exception as e:  # noqa: BLE001
        return {**out, "status": _reason(e), "traceback": traceback.format_exc(limit=6)}
    out["status"] = "ok"
    return out


def kernel_cells(spec: dict, isolated: bool = True) -> dict:
    """Several sizes of one contender in this process (the scaling sweeps): one import and
    compile cache per contender. Every size is timed first, then every size's memory is
    measured: the memory pass changes malloc's settings (bench/memory.py), which must not touch
    a later timing."""
    cells = spec["cells"]
    if len(cells) == 1:
        return {"status": "ok", "rows": [_guarded(kernel_cell, cells[0], isolated, "all")]}
    rows = [_guarded(kernel_cell, cell, isolated, "time") for cell in cells]
    for i, cell in enumerate(cells):
        if rows[i].get("status") == "ok":
            mem = _guarded(kernel_cell, cell, isolated, "memory")
            rows[i] = {**rows[i], **{k: v for k, v in mem.items() if k != "timing"}}
    return {"status": "ok", "rows": rows}


def _guarded(fn, cell: dict, isolated: bool, phase: str) -> dict:
    try:
        return fn(cell, isolated, phase)
    except Exception as e:  # noqa: BLE001
        return {k: cell[k] for k in ("contender", "N", "d", "V", "dtype", "device")} | {"status": _reason(e)}
    finally:
        gc.collect()


def run(spec: dict, isolated: bool = True) -> dict:
    if spec["kind"] == "kernel":
        return kernel_cell(spec, isolated)
    if spec["kind"] == "kernel_cells":
        return kernel_cells(spec, isolated)
    if spec["kind"] == "train":
        from .train_step import train_cell

        return train_cell(spec)
    if spec["kind"] == "matmul":
        from .env import matmul_throughput
        from .inputs import DTYPES

        return {"status": "ok", **matmul_throughput(spec["device"], DTYPES[spec["dtype"]], spec["size"])}
    raise ValueError(f"unknown cell kind {spec['kind']!r}")
