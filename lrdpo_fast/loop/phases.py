"""The four phases of one iteration, each a function of the loop's live state that writes its
outputs atomically and returns a JSON-able summary (stored in the phase's completion marker).

    sample: k responses per drawn prompt from the live sampler       -> samples.jsonl
    score:  the reward of every response                             -> scores.jsonl
    pairs:  build_pairs + the reference log-probs under policy_i     -> pairs.jsonl, pairs_stats.json
    train:  LR-DPO of policy_i against itself (stored reference)     -> train/, policy/
            (LoRA: the adapter trains, then is merged into policy/, a plain model)

``PHASE_FUNCS`` maps each name of ``run_dir.PHASES`` (the order) to its function: a new phase is
a function here, its name there, and a CLI command (``cli/iterate.py`` reads ``PHASES``).

Under torchrun every rank runs every phase (the loop calls them on all ranks) and rank 0 alone
writes the outputs; the phases after it read them back, so every rank trains on rank 0's pairs.
Sampling is collective (the sampler gathers the samples to every rank); scoring runs on rank 0;
the reference log-probs of a policy already sharded by FSDP2 are computed through its sharded root
on every rank (a collective), those of an unsharded one on rank 0.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.atomic import atomic_dir, atomic_write_json, atomic_write_jsonl, fault_point
from ..data.files import read_jsonl
from ..data.records import tokenize_pairs
from ..data.seeds import stream_seed
from ..model.packed import precompute_reference_logps
from ..train.checkpoint import latest_checkpoint
from ..train.config import TrainConfig
from ..train.distributed import DistInfo
from ..train.reference import precompute_through_root
from ..train.trainer import Trainer
from .config import IterateConfig
from .pairs import ScoredGroup, pairs_from_spec
from .replay import mix_replay, replay_pool
from .run_dir import PHASES, RunDir
from .sampler_reference import attach_sampler_reference, sampler_sums
from .samples import read_prompted_samples, write_samples


@dataclass
class LoopState:
    """What lives for the whole run: the config, its run directory, the tokenizer, the policy
    (a module, or the ``PolicyLoss`` root a Trainer returned), the sampler, the reward, the
    prompt pool, and this process's rank (``dist``: rank 0 writes the run directory)."""

    cfg: IterateConfig
    run: RunDir
    tokenizer: Any
    policy: torch.nn.Module
    sampler: Any
    reward: Any
    prompt_pool: list
    start_path: str | None = None  # the start policy's folder (policy_0)
    implicit_reference: str | None = None  # the folder the implicit reward's reference holds now
    timings: dict[str, float] = field(default_factory=dict)
    dist: DistInfo = field(default_factory=DistInfo)
    progress: bool = False  # progress bars for sampling and evaluation (rank 0)
    tracker: Any = None  # report_to's Tracker of the whole run (rank 0), or None
    tracked: dict[int, dict] = field(default_factory=dict)  # summary row values handed to the tracker

    @property
    def model(self) -> torch.nn.Module:
        """The causal LM of the live policy."""
        return getattr(self.policy, "policy", self.policy)

    @property
    def sharded(self) -> bool:
        """True once the Trainer sharded the policy with FSDP2 (under torchrun)."""
        return bool(getattr(self.policy, "sharded", False))


def draw_prompts(pool_size: int, k: int, seed: int, iteration: int) -> list[int]:
    """Indices of the ``k`` prompts of ``iteration`` (without replacement; all when k >= pool)."""
    rng = random.Random(stream_seed(seed, iteration))
    return sorted(rng.sample(range(pool_size), min(k, pool_size)))


def iteration_train_config(train: TrainConfig, output_dir: str) -> TrainConfig:
    """The run's ``TrainConfig`` (checked once, when the config was built) with the two fields
    the loop owns set for one iteration: its ``output_dir``, and no final save (the loop saves
    the policy itself)."""
    cfg = copy.copy(train)
    cfg.output_dir, cfg.save_final = output_dir, False
    return cfg


def sample_phase(state: LoopState, i: int) -> dict:
    """Draw this iteration's prompts and sample ``sampler.n`` responses to each."""
    cfg = state.cfg
    idx = draw_prompts(len(state.prompt_pool), cfg.prompts_per_iteration, cfg.seed, i)
    prompts = [state.prompt_pool[j] for j in idx]
    args = cfg.sampler.generation.sampling_args()
    if cfg.train.reference == "sampler" and cfg.train.loss_type != "simpo":
        args["logprobs"] = True  # policy_i's log-prob of every sampled token: the pairs' reference
    t0 = time.perf_counter()
    groups = state.sampler.generate(
        prompts,
        **args,
        seed=stream_seed(cfg.seed, i),
        progress=state.progress and state.dist.is_main,
    )
    dt = time.perf_counter() - t0
    fault_point("sample")
    if state.dist.is_main:
        write_samples(state.run.path(i, "samples.jsonl"), groups, prompts=prompts, pool_indices=idx)
    lengths = [s.num_tokens for g in groups for s in g]
    return {
        "prompts": len(prompts),
        "samples": len(lengths),
        "response_length_mean": sum(lengths) / len(lengths),
        "truncated": sum(s.truncated for g in groups for s in g),
        "time_sample_s": dt,
        "sample_tokens_per_s": sum(lengths) / max(dt, 1e-9),
    }


def _reward_inputs(reward, prompts: list, groups: list) -> tuple[list, list, list[bool]]:
    """Flat (prompts, responses, truncated) as the reward takes them: token ids for a reward
    that scores tokens (the implicit one), the prompt and the text otherwise."""
    by_ids = getattr(reward, "accepts_token_ids", False)
    flat_p, flat_r, cut = [], [], []
    for p, g in zip(prompts, groups):
        for s in g:
            flat_p.append(s.prompt_ids if by_ids else p)
            flat_r.append(s.response_ids if by_ids else s.text)
            cut.append(s.truncated)
    return flat_p, flat_r, cut


def implicit_reference_path(state: LoopState, i: int) -> str | None:
    """DICE: the implicit reward of policy_i is measured against the model it was trained
    against, policy_{i-1} (the start policy's folder for i = 1, else iteration i-2's saved
    policy); policy_0's is the configured ``reward.reference`` (None here)."""
    if i == 0:
        return None
    return state.start_path if i == 1 else str(state.run.path(i - 2, "policy"))


def _point_reference(state: LoopState, i: int) -> None:
    """Load policy_{i-1}'s weights into an implicit reward's reference model (every rank)."""
    path = implicit_reference_path(state, i)
    ref_model = getattr(state.reward, "ref_model", None)
    if path is None or ref_model is None or path == state.implicit_reference:
        return
    from ..train.checkpoint import apply_model_weights, load_model_weights

    apply_model_weights(ref_model, load_model_weights(path))
    state.implicit_reference = path


def score_phase(state: LoopState, i: int) -> dict:
    """Score every sampled response with the run's reward (token ids for the implicit reward).
    Under torchrun rank 0 scores and writes; the other ranks return ``{}`` (the loop only records
    rank 0's summary). An implicit reward of an FSDP2-sharded policy is the exception: its
    policy log-probs go through the sharded root, so every rank scores every response."""
    reward = state.reward
    through_root = hasattr(reward, "through_root") and state.sharded
    if not state.dist.is_main and not through_root:
        return {}
    _point_reference(state, i)
    prompts, groups = read_prompted_samples(state.run.path(i, "samples.jsonl"))
    flat_p, flat_r, cut = _reward_inputs(reward, prompts, groups)
    t0 = time.perf_counter()
    if hasattr(reward, "through_root"):
        reward.through_root(state.policy if through_root else None)
    # token-scoring rewards (the implicit one) score a truncated sample without an EOS, as training does
    scores = (
        reward(flat_p, flat_r, truncated=cut) if getattr(reward, "uses_truncation", False) else reward(flat_p, flat_r)
    )
    dt = time.perf_counter() - t0
    if not state.dist.is_main:
        return {}
    fault_point("score")
    slots = [(p, j) for p, g in enumerate(groups) for j in range(len(g))]
    rows = [{"prompt_index": p, "sample_index": j, "score": float(v)} for (p, j), v in zip(slots, scores)]
    atomic_write_jsonl(state.run.path(i, "scores.jsonl"), rows)
    return {
        "implicit_reference": implicit_reference_path(state, i) if hasattr(reward, "ref_model") else None,
        "reward_mean": sum(scores) / len(scores),
        "time_score_s": dt,
        "score_responses_per_s": len(scores) / max(dt, 1e-9),
    }


def _scored_groups(run: RunDir, i: int) -> list[ScoredGroup]:
    prompts, groups = read_prompted_samples(run.path(i, "samples.jsonl"))
    scores: list[list[float]] = [[] for _ in groups]
    for rec in read_jsonl(run.path(i, "scores.jsonl")):
        scores[rec["prompt_index"]].append(float(rec["score"]))
    return [ScoredGroup(p, g, s) for p, g, s in zip(prompts, groups, scores)]


def _reference_logps(state: LoopState, examples: list) -> list:
    """The examples with policy_i's log-probs as their reference: through the FSDP2 root on every
    rank when sharded, else the unsharded model on rank 0 (the other ranks keep them as given)."""
    train = state.cfg.train
    if state.sharded:
        # FSDP2: only the root's forward methods gather the full weights (its own embeddings,
        # final norm and LM head included); the same fp32 computation as the unsharded path
        return precompute_through_root(
            state.policy,
            examples,
            max_tokens_per_batch=train.max_tokens_per_batch,
            device=next(state.policy.parameters()).device,
            autocast=contextlib.nullcontext,
            ld_alpha=train.ld_alpha,
        )
    if not state.dist.is_main:
        return examples
    with torch.no_grad():
        return precompute_reference_logps(
            state.model,
            examples,
            max_tokens_per_batch=train.max_tokens_per_batch,
            backend=train.backend,
            progress=train.progress,
            ld_alpha=train.ld_alpha,  # LD-DPO: the reference sums with the policy's token weights
        )


def _with_replay(pairs: list[dict], cfg: IterateConfig, i: int) -> tuple[list[dict], int]:
    """The generated pairs mixed with ``pairs.replay``'s offline ones (DICE; seeded per
    iteration, never on a generated prompt), each marked with its ``origin``; as they are when
    no replay is set. Returns (pairs, how many came from the replay set)."""
    spec = cfg.pairs.replay
    if spec is None:
        return pairs, 0
    generated = [{**p, "origin": "generated"} for p in pairs]
    # an offline record's stored reference (e.g. a judge round's pairs.jsonl) is another policy's:
    # this iteration's reference pass scores every pair again
    stale = ("ref_chosen_logps", "ref_rejected_logps")
    offline = [{**{k: v for k, v in p.items() if k not in stale}, "origin": "replay"} for p in replay_pool(spec)]
    with warnings.catch_warnings():  # fewer eligible than the ratio asks: the marker's count says so
        warnings.simplefilter("ignore", UserWarning)
        mixed = mix_replay(generated, offline, ratio=spec.ratio, seed=stream_seed(cfg.seed, i))
    return [dict(p) for p in mixed], len(mixed) - len(generated)


def _sampler_reference(state: LoopState, groups: list, pairs: list, examples: list) -> tuple[list, dict]:
    """``train.reference: sampler``: the engine's log-prob sums of the sampled tokens, the usual
    pass for the pairs it cannot cover and for the spot check (``sampler_reference.py``)."""
    if not state.sharded and not state.dist.is_main:
        return examples, {}
    sums = sampler_sums(groups, pairs, examples)
    return attach_sampler_reference(examples, sums, lambda exs: _reference_logps(state, exs))


def pairs_phase(state: LoopState, i: int) -> dict:
    """Best/worst pairs from the scores, with the reference log-probs of policy_i (packed, fused).

    Every rank builds the pairs (so all raise alike when none is kept); rank 0 writes them. The
    reference: through the root when policy_i is FSDP2-sharded (every rank, in the same order),
    else the unsharded model on rank 0 (the other ranks return ``{}``)."""
    cfg = state.cfg
    t0 = time.perf_counter()
    groups = _scored_groups(state.run, i)
    pairs, stats = pairs_from_spec(groups, cfg.pairs, stream_seed(cfg.seed, i))
    if not pairs:
        raise ValueError(
            f"iteration {i}: build_pairs kept no pair ({stats.to_dict()}); sample more (sampler.n, "
            "prompts_per_iteration) or relax pairs.min_score_gap / drop_truncated"
        )
    pairs, n_replay = _with_replay(pairs, cfg, i)
    examples = tokenize_pairs(
        pairs, state.tokenizer, max_length=cfg.train.max_length, max_prompt_length=cfg.train.max_prompt_length
    )
    n_tokens = sum(ex.num_tokens for ex in examples)
    ref_info: dict = {}
    if cfg.train.loss_type != "simpo" and cfg.train.reference == "sampler":
        examples, ref_info = _sampler_reference(state, groups, pairs, examples)
    elif cfg.train.loss_type != "simpo":
        examples = _reference_logps(state, examples)
    if not state.dist.is_main:
        return {}
    if cfg.train.loss_type != "simpo":
        for rec, ex in zip(pairs, examples):
            rec["ref_chosen_logps"], rec["ref_rejected_logps"] = ex.ref_chosen_logps, ex.ref_rejected_logps
    dt = time.perf_counter() - t0
    atomic_write_jsonl(state.run.path(i, "pairs.jsonl"), pairs)
    atomic_write_json(state.run.path(i, "pairs_stats.json"), stats.to_dict())
    out = {k: v for k, v in stats.to_dict().items() if isinstance(v, (int, float, str)) or v is None}
    out.update(
        {"replay_pairs": n_replay, "time_pairs_s": dt, "reference_tokens_per_s": n_tokens / max(dt, 1e-9), **ref_info}
    )
    return out


def train_phase(state: LoopState, i: int) -> dict:
    """LR-DPO of the live policy on this iteration's pairs (reference = the stored log-probs of
    policy_i), resumed from its last checkpoint when one exists; saves policy_{i+1}. Under
    torchrun every rank reads rank 0's pairs.jsonl and the Trainer shards the policy (FSDP2)."""
    out_dir = state.run.path(i, "train")
    pairs = read_jsonl(state.run.path(i, "pairs.jsonl"))
    trainer = Trainer(state.policy, state.tokenizer, pairs, iteration_train_config(state.cfg.train, str(out_dir)))
    if state.tracker is not None:  # the run's tracker: training steps counted across iterations
        trainer.writer.tracker = state.tracker
        trainer.writer.step_offset = sum(state.run.done_info(j, "train").get("steps", 0) for j in range(i))
    resume = "latest" if latest_checkpoint(out_dir) is not None else None
    t0 = time.perf_counter()
    history = trainer.train(resume_from_checkpoint=resume)
    dt = time.perf_counter() - t0
    # LoRA: the adapter folded into policy_{i+1}, saved and synced as a plain model; the next
    # iteration's Trainer injects a fresh one. Else one (possibly sharded) root for the whole run.
    state.policy = trainer.merge_adapter() if trainer.peft_model is not None else trainer.policy_loss
    if state.dist.is_main:
        with atomic_dir(state.run.path(i, "policy")) as tmp:
            trainer.save_model(tmp)
    else:
        trainer.save_model(state.run.path(i, "policy"))  # takes part in the gather; rank 0 writes
    last = history[-1] if history else {}
    n_tokens = sum(r.get("tokens", 0) for r in history)
    return {
        "steps": trainer.global_step,
        "loss": last.get("loss"),
        "reward_accuracy": last.get("rewards/accuracies"),
        "margin": last.get("rewards/margins"),
        "time_train_s": dt,
        "train_tokens_per_s": n_tokens / max(dt, 1e-9),
    }


PHASE_FUNCS = {"sample": sample_phase, "score": score_phase, "pairs": pairs_phase, "train": train_phase}
assert tuple(PHASE_FUNCS) == PHASES, "every phase of run_dir.PHASES has its function here, in order"
