"""A weight sync that proves itself: after every ``load_weights`` the engine's prompt log-probs
of a fixed probe sequence are compared with the same tokens' log-probs from the weights it was
handed, computed on the training side (packed, fused kernel, no logits).

The probe is ``PROBE_TOKENS`` ids (the tokenizer's BOS first when it has one, then a fixed
pseudo-random walk over the vocabulary): every position's log-prob depends on the embeddings,
every layer and the head, so a stale or garbled tensor anywhere shows. The tolerance follows
the engine's dtype (``sync_tolerance``): 64 machine epsilons of it, at least 1e-3 (float32
1e-3, float16 0.0625, bfloat16 0.5); measured on the CPU in float32: under 1e-6 when right,
0.2-0.7 after a dropped or stale reload.

The reference side, by what ``load_weights`` was given:
- a module (not sharded): its own forward through ``model_token_logprobs``;
- ``verify_with=root`` (a PolicyLoss-like root with ``sequence_logps``, e.g. the FSDP2 root under
  torchrun): one short sequence per probe position (its prefix, then that token), scored through
  the root, so every rank takes part in the same collectives;
- a state dict or (name, tensor) pairs: a skeleton of the engine's architecture (allocated
  without initialisation) whose parameters are the given tensors, assigned, not copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PROBE_TOKENS = 16


class WeightSyncError(RuntimeError):
    """The engine does not serve the weights ``load_weights`` was given.

    Attributes: ``position`` (first probe position whose log-prob differs by more than the
    tolerance), ``max_diff`` (largest absolute difference over the probe), ``tolerance``.
    """

    def __init__(self, position: int, max_diff: float, tolerance: float, detail: str = "") -> None:
        self.position, self.max_diff, self.tolerance = position, max_diff, tolerance
        self.args_for_ranks = (position, max_diff, tolerance)  # rebuilt on the other ranks
        super().__init__(
            f"weight sync: the engine does not serve the given weights: probe log-probs first differ at "
            f"position {position}, largest difference {max_diff:.3g} (tolerance {tolerance:.3g}){detail}"
        )


def sync_tolerance(dtype: torch.dtype) -> float:
    """Largest accepted |engine - reference| probe log-prob for an engine running in ``dtype``."""
    return max(1e-3, 64 * torch.finfo(dtype).eps)


def probe_ids(vocab_size: int, bos_token_id: int | None) -> list[int]:
    """The fixed probe: BOS (when given) then ids of a fixed walk over ``[0, vocab_size)``."""
    start = [] if bos_token_id is None else [int(bos_token_id)]
    walk = [(7919 * k + 104729 * (k * k % 31)) % vocab_size for k in range(1, PROBE_TOKENS + 1)]
    return (start + walk)[:PROBE_TOKENS]


def engine_probe_logprobs(llm, ids: Sequence[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t = 1 .. T-1 as the engine computes them (prompt log-probs)."""
    from vllm import SamplingParams

    # no detokenization: only the ids' log-probs are read (decoding each position's token costs)
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    out = llm.generate([{"prompt_token_ids": list(ids)}], params, use_tqdm=False)[0]
    return [float(out.prompt_logprobs[t][ids[t]].logprob) for t in range(1, len(ids))]


def _probe_pairs(ids: Sequence[int], prefix_per_position: bool):
    from ...data.records import PairExample

    if not prefix_per_position:  # one pair: prompt = the first token, chosen = the rest
        return [PairExample([ids[0]], list(ids[1:]), [ids[1]])]
    return [PairExample(list(ids[:t]), [ids[t]], [ids[t]]) for t in range(1, len(ids))]


@torch.no_grad()
def reference_probe_logprobs(ids: Sequence[int], *, module=None, root=None) -> list[float]:
    """log p(ids[t] | ids[:t]), t = 1 .. T-1, from ``module`` (token-level, one forward) or from
    ``root.sequence_logps`` (one short pair per position). Float python numbers."""
    from ...data.packing import pack_pairs

    if root is not None:
        batch = pack_pairs(_probe_pairs(ids, prefix_per_position=True))
        device = next(root.parameters()).device
        logps = root.sequence_logps(batch.to(device)).logps
        return [float(v) for v in logps.float().cpu()[0::2]]
    from ...model.token_logprobs import model_token_logprobs

    batch = pack_pairs(_probe_pairs(ids, prefix_per_position=False))
    was_training = module.training
    module.eval()
    try:
        per_token = model_token_logprobs(module, batch).float().cpu()
    finally:
        module.train(was_training)
    first = int(batch.cu_seqlens[1])  # the chosen sequence: positions 0 .. T-1, label t+1 at t
    return [float(v) for v in per_token[: first - 1]]


def compare_probe(engine: Sequence[float], reference: Sequence[float], tolerance: float) -> None:
    """Raise WeightSyncError when any |engine - reference| exceeds ``tolerance`` (or is NaN)."""
    diffs = [abs(a - b) for a, b in zip(engine, reference)]
    bad = [t for t, d in enumerate(diffs) if not d <= tolerance]
    if len(engine) != len(reference) or bad:
        worst = max((d if math.isfinite(d) else math.inf) for d in diffs) if diffs else math.inf
        raise WeightSyncError(bad[0] + 1 if bad else 0, worst, tolerance)


def skeleton_with_weights(model_dir: str, items: list[tuple[str, torch.Tensor]]) -> torch.nn.Module:
    """The engine's architecture (``model_dir``'s config) as a transformers module whose
    parameters ARE ``items`` (checkpoint names; assigned, not copied; a tied head tied), its
    buffers (rotary frequencies, ...) computed as usual, on the tensors' device."""
    import contextlib

    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers: initialised, then replaced
        no_init_weights = contextlib.nullcontext
    state = {name: t.detach() for name, t in items}
    first = next(iter(state.values()))
    with no_init_weights():
        module = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), torch_dtype=first.dtype)
    module.load_state_dict(state, strict=False, assign=True)
    if getattr(module.config, "tie_word_embeddings", False):
        module.tie_weights()
    return module.to(first.device).eval()


_warned_sharded = False


def _probe_vocab(sampler) -> int:
    embed = [s.shape[0] for k, s in sampler._specs.items() if k.endswith("embed_tokens.weight")]
    return min([len(sampler.tokenizer), *embed])


def _reference(ids, weights, items, root, model_dir: str):
    """The reference probe log-probs on this rank, or None where this rank has nothing to score
    (rank0 layout without the weights) or the weights are sharded without a root."""
    global _warned_sharded
    from .weights import is_dtensor

    if root is not None:
        return reference_probe_logprobs(ids, root=root)
    if isinstance(weights, torch.nn.Module):
        if any(is_dtensor(p) for p in weights.parameters()):
            if not _warned_sharded:
                import logging

                logging.getLogger(__name__).warning(
                    "VLLMSampler: the weights are sharded (FSDP2) and no verify_with root was given: "
                    "the sync is not verified (pass load_weights(module, verify_with=policy_root))"
                )
                _warned_sharded = True
            return None
        return reference_probe_logprobs(ids, module=weights)
    if not items:
        return None
    return reference_probe_logprobs(ids, module=skeleton_with_weights(model_dir, items))


def check_sync(sampler, *, weights=None, items=None, root=None) -> float:
    """The probe check of ``VLLMSampler.verify`` on this rank: the largest difference, or
    ``WeightSyncError``. ``items`` are the checked (name, tensor) pairs of a state dict (used
    when ``weights`` is not a module)."""
    from .weights import named_tensors

    ids = probe_ids(_probe_vocab(sampler), getattr(sampler.tokenizer, "bos_token_id", None))
    if items is None and weights is not None and not isinstance(weights, torch.nn.Module):
        items = named_tensors(weights)
    reference = _reference(ids, weights, items, root, sampler.model_dir)
    if not sampler.hosts_engine or reference is None:
        return 0.0
    engine = sampler.probe_logprobs(ids)
    tolerance = sync_tolerance(sampler._engine_dtype)
    compare_probe(engine, reference, tolerance)
    return max(abs(a - b) for a, b in zip(engine, reference))
