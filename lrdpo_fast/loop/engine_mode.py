"""The run's engine mode (``sampler.enforce_eager``), decided once per run directory.

``auto`` is decided by ``sampler.eager.choose_enforce_eager`` from the device, the policy's size,
the tokens the run samples and vLLM's compile cache, logged in one line, and recorded in
``run_dir/engine.json``: a resume starts the same engine (a compiled and an eager engine need not
give the same floats, and a resumed run must equal an uninterrupted one), whatever the cache holds
by then. An explicit ``true``/``false`` is used as given. A run directory from before ``auto``
existed ran with the bool its config.yaml records, and resumes with it. The key is not compared
on a resume (``run_record.ENGINE_KEYS``): it says how the engine starts, not what the run computes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

from ..data.atomic import atomic_write_json
from ..train.distributed import DistInfo, all_gather_objects
from .config import IterateConfig
from .run_dir import RunDir
from .sampler.eager import EagerInputs, cache_warm, choose_enforce_eager, compile_cache_key, run_tokens

RECORD = "engine.json"


def _recorded(run: RunDir) -> bool | None:
    """The mode this run directory started with: engine.json, else an older config.yaml's bool."""
    path = run.root / RECORD
    if path.is_file():
        return bool(json.loads(path.read_text(encoding="utf-8"))["enforce_eager"])
    if run.config_path.is_file():
        import yaml

        stored = yaml.safe_load(run.config_path.read_text(encoding="utf-8")) or {}
        value = ((stored.get("config") or {}).get("sampler") or {}).get("enforce_eager")
        if isinstance(value, bool):
            return value
    return None


def decide(cfg: IterateConfig, run: RunDir, policy_dir: str, parameters: int) -> tuple[bool, str]:
    """(enforce_eager, why) for this run (module docstring)."""
    chosen = cfg.sampler.engine.enforce_eager
    if chosen != "auto":
        return bool(chosen), "set in the config"
    recorded = _recorded(run)
    if recorded is not None:
        return recorded, "as this run directory started"
    gen, engine = cfg.sampler.generation, cfg.sampler.engine
    key = compile_cache_key(policy_dir, engine.dtype, engine.max_model_len)
    tokens = run_tokens(cfg.prompts_per_iteration, gen.n, gen.max_new_tokens, cfg.iterations)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return choose_enforce_eager(EagerInputs(device, parameters, tokens, cache_warm(key)))


def resolve(cfg: IterateConfig, run: RunDir, policy_dir: str, model: Any, ranks: DistInfo) -> dict[str, Any]:
    """Rank 0's decision, on every rank: ``{"enforce_eager": bool, "why": str}``."""
    mode = None
    if ranks.is_main:
        eager, why = decide(cfg, run, policy_dir, sum(p.numel() for p in model.parameters()))
        mode = {"enforce_eager": eager, "why": why}
    if ranks.world_size > 1:
        mode = all_gather_objects(mode, ranks.world_size)[0]
    return mode


def record(run: RunDir, mode: dict[str, Any], ranks: DistInfo, progress: bool) -> None:
    """Write engine.json on the first start (rank 0) and say the choice in one line."""
    if not ranks.is_main:
        return
    if not (run.root / RECORD).is_file():
        atomic_write_json(run.root / RECORD, mode)
    if progress:
        print(f"lrdpo-fast: sampler.enforce_eager={mode['enforce_eager']} ({mode['why']})", file=sys.stderr, flush=True)
