"""``lrdpo-fast demo --dice``: DICE (bootstrapping with the DPO implicit reward) on the demo task.

From the shipped start policy, one round of iterative DPO scored by the length-biased judge
(``round0``), then rounds scored by the policy's own implicit reward, log pi_i(y) - log
pi_{i-1}(y) (round 1's reference: the start policy, the model round 0 trained against), in four
variants from the same round-0 policy: with and without DICE's length-regularized shaping
(``pairs.length_alpha: auto``), and with and without experience replay of round 0's judge pairs
(``pairs.replay``, half of each round's pairs). The same held-out evaluation (true accuracy,
length, judge, LC win rate) follows every round. Writes ``OUT/dice/<variant>/`` run directories,
``OUT/dice/dice.png`` and prints one table: rounds 0 and 1 are shared (the start, the judge
round), 2.. are the implicit-reward rounds.
"""

from __future__ import annotations

import time
from pathlib import Path

from .demo_setup import DemoSettings, demo_table, run_config

# name -> (label, length shaping, replay)
VARIANTS = {
    "implicit": ("implicit reward", False, False),
    "implicit_lc": ("+ length shaping", True, False),
    "implicit_replay": ("+ replay", False, True),
    "dice": ("DICE (shaping + replay)", True, True),
}
JUDGE_ROUND = "round0"
# what the plot shows: the implicit-reward rounds never see the judge, and each run's win rates
# compare with its own start (round 0's policy for the variants), so they are left out here
DICE_PLOT_KEYS = (
    ("true_accuracy", "true accuracy (held out)"),
    ("mean_response_length", "response length (tokens)"),
    ("judge_reward", "judge reward (only round 1 sees it)"),
)


def variant_config(s: DemoSettings, name: str, out: Path, seed: int) -> dict:
    """The ``IterateConfig`` mapping of one implicit-reward variant, started from round 0's policy."""
    _, shaping, replay = VARIANTS[name]
    round0 = out / JUDGE_ROUND / "iter_0"
    # seed + 1: the rounds draw other prompts than round 0, whose judge pairs are the replay set
    cfg = run_config(s, 0.0, out / name, seed + 1, policy=str(round0 / "policy"))
    cfg["reward"] = {"implicit": True, "reference": "example"}  # round 0 trained against the start policy
    cfg["pairs"] = {"strategy": "best_worst", "length_alpha": "auto" if shaping else 0.0, "drop_truncated": True}
    if replay:
        cfg["pairs"]["replay"] = {"pairs": str(round0 / "pairs.jsonl"), "ratio": 0.5}
    return cfg


def run_dice(out: Path, *, settings: DemoSettings, seed: int = 0, printer=None) -> dict[str, list[dict]]:
    """Round 0 (the judge), then every variant; returns {variant: rows over all rounds}."""
    from dataclasses import replace

    from ..loop.config import IterateConfig
    from ..loop.iterate import iterate

    out = out / "dice"
    round0 = iterate(
        IterateConfig.from_dict(run_config(replace(settings, iterations=1), 0.0, out / JUDGE_ROUND, seed)),
        progress=False,
        on_row=printer and printer(JUDGE_ROUND),
    )
    runs = {}
    for name in VARIANTS:
        rows = iterate(
            IterateConfig.from_dict(variant_config(settings, name, out, seed)),
            progress=False,
            on_row=printer and printer(name),
        )
        runs[name] = round0 + [{**r, "iteration": r["iteration"] + 1} for r in rows[1:]]
    return runs


def _printer(t0: float):
    def for_run(name: str):
        def show(row: dict) -> None:
            print(
                f"  {name} row {row['iteration']}: true accuracy {row.get('true_accuracy', float('nan')):.3f}, "
                f"judge {row.get('judge_reward', float('nan')):.3f}, length "
                f"{row.get('mean_response_length', float('nan')):.1f} tokens  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )

        return show

    return for_run


def main(out: Path, settings: DemoSettings, seed: int) -> int:
    """``lrdpo-fast demo --dice``: the runs, the table and the plot."""
    from ..loop.report import plot_summary

    t0 = time.perf_counter()
    print(f"lrdpo-fast demo --dice: a judge round, then implicit-reward rounds -> {out / 'dice'}", flush=True)
    runs = run_dice(out, settings=settings, seed=seed, printer=_printer(t0))
    print()
    print(demo_table(runs, label=lambda n: VARIANTS[n][0]))
    plot = out / "dice" / "dice.png"
    plot_summary(
        [],
        plot,
        runs={VARIANTS[n][0]: rs for n, rs in runs.items()},
        keys=DICE_PLOT_KEYS,
        title="DICE on the demo task: round 1 by the judge, then the policy's own implicit reward",
    )
    print(f"\nplot: {plot}   ({time.perf_counter() - t0:.0f} s)")
    return 0
