"""The four phases of one iteration, each a function of the loop's live state that writes its
outputs atomically and returns a JSON-able summary (stored in the phase's completion marker).

    sample: k responses per drawn prompt from the live sampler       -> samples.jsonl
    score:  the reward of every response                             -> scores.jsonl
    pairs:  build_pairs + the reference log-probs under policy_i     -> pairs.jsonl, pairs_stats.json
    train:  LR-DPO of policy_i against itself (stored reference)     -> train/, policy/

Under torchrun every rank runs every phase (the loop calls them on all ranks) and rank 0 alone
writes the outputs; the phases after it read them back, so every rank trains on rank 0's pairs.
Sampling is collective (the sampler gathers the samples to every rank); scoring runs on rank 0;
the reference log-probs of a policy already sharded by FSDP2 are computed through its sharded root
on every rank (a collective), those of an unsharded one on rank 0.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.atomic import atomic_dir, atomic_write_json, atomic_write_jsonl, fault_point
from ..data.files import read_jsonl
from ..data.records import tokenize_pairs
from ..data.seeds import stream_seed
from ..model.packed import precompute_reference_logps
from ..train.checkpoint import latest_checkpoint
from ..train.distributed import DistInfo
from ..train.reference import precompute_through_root
from ..train.trainer import Trainer
from .config import IterateConfig
from .pairs import ScoredGroup, build_pairs
from .run_dir import RunDir
from .samples import Sample


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
    reference: torch.nn.Module | None = None  # implicit reward: the current policy's own reference
    timings: dict[str, float] = field(default_factory=dict)
    dist: DistInfo = field(default_factory=DistInfo)
    progress: bool = False  # progress bars for sampling and evaluation (rank 0)

    @property
    def model(self) -> torch.nn.Module:
        """The causal LM of the live policy."""
        return getattr(self.policy, "policy", self.policy)


def draw_prompts(pool_size: int, k: int, seed: int, iteration: int) -> list[int]:
    """Indices of the ``k`` prompts of ``iteration`` (without replacement; all when k >= pool)."""
    rng = random.Random(stream_seed(seed, iteration))
    return sorted(rng.sample(range(pool_size), min(k, pool_size)))


def _samples_of(run: RunDir, i: int) -> tuple[list, list[list[Sample]]]:
    prompts: list = []
    groups: list[list[Sample]] = []
    for rec in read_jsonl(run.path(i, "samples.jsonl")):
        if rec["sample_index"] == 0:
            prompts.append(rec["prompt"])
            groups.append([])
        groups[-1].append(Sample.from_record(rec))
    return prompts, groups


def sample_phase(st: LoopState, i: int) -> dict:
    """Draw this iteration's prompts and sample ``sampler.n`` responses to each."""
    cfg, sc = st.cfg, st.cfg.sampler
    idx = draw_prompts(len(st.prompt_pool), cfg.prompts_per_iteration, cfg.seed, i)
    prompts = [st.prompt_pool[j] for j in idx]
    t0 = time.perf_counter()
    groups = st.sampler.generate(
        prompts,
        n=sc.n,
        temperature=sc.temperature,
        top_p=sc.top_p,
        max_new_tokens=sc.max_new_tokens,
        seed=stream_seed(cfg.seed, i),
        progress=st.progress and st.dist.is_main,
    )
    dt = time.perf_counter() - t0
    fault_point("sample")
    rows = [
        {"prompt_index": p, "sample_index": j, "pool_index": idx[p], "prompt": prompts[p], **s.to_record()}
        for p, group in enumerate(groups)
        for j, s in enumerate(group)
    ]
    if st.dist.is_main:
        atomic_write_jsonl(st.run.path(i, "samples.jsonl"), rows)
    lengths = [s.num_tokens for g in groups for s in g]
    return {
        "prompts": len(prompts),
        "samples": len(lengths),
        "response_length_mean": sum(lengths) / len(lengths),
        "truncated": sum(s.truncated for g in groups for s in g),
        "time_sample_s": dt,
        "sample_tokens_per_s": sum(lengths) / max(dt, 1e-9),
    }


def score_phase(st: LoopState, i: int) -> dict:
    """Score every sampled response with the run's reward (token ids for the implicit reward).
    Under torchrun rank 0 scores and writes; the other ranks return ``{}`` (the loop only records
    rank 0's summary). An implicit reward of an FSDP2-sharded policy is the exception: its
    policy log-probs go through the sharded root, so every rank scores every response."""
    through_root = hasattr(st.reward, "through_root") and getattr(st.policy, "sharded", False)
    if not st.dist.is_main and not through_root:
        return {}
    prompts, groups = _samples_of(st.run, i)
    flat_p, flat_r, cut = [], [], []
    for p, g in zip(prompts, groups):
        for s in g:
            if getattr(st.reward, "accepts_token_ids", False):
                flat_p.append(s.prompt_ids)
                flat_r.append(s.response_ids)
            else:
                flat_p.append(p)
                flat_r.append(s.text)
            cut.append(s.truncated)
    t0 = time.perf_counter()
    if hasattr(st.reward, "through_root"):
        st.reward.through_root(st.policy if through_root else None)
    # token-scoring rewards (the implicit one) score a truncated sample without an EOS, as training does
    scores = (
        st.reward(flat_p, flat_r, truncated=cut)
        if getattr(st.reward, "uses_truncation", False)
        else st.reward(flat_p, flat_r)
    )
    dt = time.perf_counter() - t0
    if not st.dist.is_main:
        return {}
    fault_point("score")
    rows, k = [], 0
    for p, g in enumerate(groups):
        for j in range(len(g)):
            rows.append({"prompt_index": p, "sample_index": j, "score": float(scores[k])})
            k += 1
    atomic_write_jsonl(st.run.path(i, "scores.jsonl"), rows)
    return {
        "reward_mean": sum(scores) / len(scores),
        "time_score_s": dt,
        "score_responses_per_s": len(scores) / max(dt, 1e-9),
    }


def pairs_phase(st: LoopState, i: int) -> dict:
    """Best/worst pairs from the scores, with the reference log-probs of policy_i (packed, fused).

    Every rank builds the pairs (so all raise alike when none is kept); rank 0 writes them. The
    reference: through the root when policy_i is FSDP2-sharded (every rank, in the same order),
    else the unsharded model on rank 0 (the other ranks return ``{}``)."""
    cfg = st.cfg
    prompts, groups = _samples_of(st.run, i)
    scores: list[list[float]] = [[] for _ in groups]
    for rec in read_jsonl(st.run.path(i, "scores.jsonl")):
        scores[rec["prompt_index"]].append(float(rec["score"]))
    t0 = time.perf_counter()
    pairs, stats = build_pairs(
        [ScoredGroup(p, g, s) for p, g, s in zip(prompts, groups, scores)],
        strategy=cfg.pairs.strategy,
        length_alpha=cfg.pairs.length_alpha,
        drop_truncated=cfg.pairs.drop_truncated,
        min_score_gap=cfg.pairs.min_score_gap,
        seed=stream_seed(cfg.seed, i),
    )
    if not pairs:
        raise ValueError(
            f"iteration {i}: build_pairs kept no pair ({stats.to_dict()}); sample more (sampler.n, "
            "prompts_per_iteration) or relax pairs.min_score_gap / drop_truncated"
        )
    train_cfg = cfg.train_config(output_dir=str(st.run.path(i, "train")))
    examples = tokenize_pairs(
        pairs, st.tokenizer, max_length=train_cfg.max_length, max_prompt_length=train_cfg.max_prompt_length
    )
    n_tokens = sum(ex.num_tokens for ex in examples)
    sharded = getattr(st.policy, "sharded", False)
    if train_cfg.loss_type != "simpo" and sharded:
        # FSDP2: only the root's forward methods gather the full weights (its own embeddings,
        # final norm and LM head included); the same fp32 computation as the unsharded path
        examples = precompute_through_root(
            st.policy,
            examples,
            max_tokens_per_batch=train_cfg.max_tokens_per_batch,
            device=next(st.policy.parameters()).device,
            autocast=contextlib.nullcontext,
        )
    if not st.dist.is_main:
        return {}
    if train_cfg.loss_type != "simpo":
        if not sharded:
            with torch.no_grad():
                examples = precompute_reference_logps(
                    st.model,
                    examples,
                    max_tokens_per_batch=train_cfg.max_tokens_per_batch,
                    backend=train_cfg.backend,
                    progress=train_cfg.progress,
                )
        for rec, ex in zip(pairs, examples):
            rec["ref_chosen_logps"], rec["ref_rejected_logps"] = ex.ref_chosen_logps, ex.ref_rejected_logps
    dt = time.perf_counter() - t0
    atomic_write_jsonl(st.run.path(i, "pairs.jsonl"), pairs)
    atomic_write_json(st.run.path(i, "pairs_stats.json"), stats.to_dict())
    out = {k: v for k, v in stats.to_dict().items() if isinstance(v, (int, float, str)) or v is None}
    out.update({"time_pairs_s": dt, "reference_tokens_per_s": n_tokens / max(dt, 1e-9)})
    return out


def train_phase(st: LoopState, i: int) -> dict:
    """LR-DPO of the live policy on this iteration's pairs (reference = the stored log-probs of
    policy_i), resumed from its last checkpoint when one exists; saves policy_{i+1}. Under
    torchrun every rank reads rank 0's pairs.jsonl and the Trainer shards the policy (FSDP2)."""
    out_dir = st.run.path(i, "train")
    train_cfg = st.cfg.train_config(output_dir=str(out_dir), save_final=False)
    pairs = read_jsonl(st.run.path(i, "pairs.jsonl"))
    trainer = Trainer(st.policy, st.tokenizer, pairs, train_cfg)
    resume = "latest" if latest_checkpoint(out_dir) is not None else None
    t0 = time.perf_counter()
    history = trainer.train(resume_from_checkpoint=resume)
    dt = time.perf_counter() - t0
    st.policy = trainer.policy_loss  # one (possibly sharded) policy for the whole run
    if st.dist.is_main:
        with atomic_dir(st.run.path(i, "policy")) as tmp:
            trainer.save_model(tmp)
    else:
        trainer.save_model(st.run.path(i, "policy"))  # takes part in the gather; rank 0 writes
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
