"""Comparison 3, the runner: every trainer of the profile in its own worker process
(bench/train_step.py's ``train_cell`` through bench/cells.py)."""

from __future__ import annotations

from .cells import run_cell


def run_train(prof: dict, *, isolate: bool = True, log=print, trainers: list[str] | None = None) -> dict:
    """Every trainer in its own worker on the profile's set-up."""
    t = prof["train"]
    log(f"train: {t['n_pairs']} pairs, {t['pairs_per_step']} pairs/step, {t['epochs']} epoch(s) on {prof['device']}")
    rows = []
    for key in trainers or t["trainers"]:
        spec = {
            "kind": "train",
            "trainer": key,
            "device": prof["device"],
            "n_pairs": t["n_pairs"],
            "pairs_per_step": t["pairs_per_step"],
            "epochs": t["epochs"],
            "max_tokens_per_batch": t["max_tokens_per_batch"],
            "tiny": t.get("tiny", False),
        }
        r = run_cell(spec, isolate=isolate, timeout=prof.get("cell_timeout", 600))
        if r.get("status") == "ok":
            r.pop("traceback", None)
            log(
                f"  {key:<12} {r['tokens_per_s']:9.1f} tok/s steady, {r['end_to_end_tokens_per_s']:9.1f} tok/s "
                f"end to end, {r['memory']['peak_bytes'] / 2**20:8.1f} MiB"
            )
        else:
            log(f"  {key:<12} {r.get('status')}")
        rows.append(r)
    return {"config": dict(t), "rows": rows}
