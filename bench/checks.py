"""Correctness of every contender against the same reference, from the sampled gradient rows the
workers saved: relative errors of the loss, dH rows and dW rows."""

from __future__ import annotations

import torch

TOLERANCE = {"fp32": 2e-3, "bf16": 5e-2, "fp16": 2e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare(check: dict, ref: dict) -> dict:
    """{"loss", "dh", "dw"} relative errors of ``check`` against ``ref`` (torch.load'ed dicts)."""
    return {
        "loss": abs(check["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30),
        "dh": _rel(check["dh_rows"], ref["dh_rows"]),
        "dw": _rel(check["dw_rows"], ref["dw_rows"]),
    }


def load(path: str) -> dict | None:
    try:
        return torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None


def verdict(errors: dict, dtype: str) -> str:
    tol = TOLERANCE.get(dtype, 1e-3)
    worst = max(errors.values())
    return f"ok ({worst:.1e})" if worst <= tol else f"MISMATCH ({worst:.1e} > {tol:.0e})"
