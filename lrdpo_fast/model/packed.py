"""Packed batches through a transformers causal LM: hidden states, sequence log-probs, references.

The decoder body (not the LM head) runs on the flat packed stream with varlen attention; the
final hidden states [N, d] go with the LM head weight [V, d] into the fused kernel
(``lrdpo_fast.ops.sequence_logprobs``), so no [N, V] logits tensor is ever materialized.
A model's logit scale or final soft cap (Granite, Cohere, Gemma 2, ...) goes to the kernels as
their temperature / softcap (``head.lm_head``); an unknown logit transform is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..data.packing import PackedBatch, pack_pairs, token_budget_batches
from ..data.records import PairExample
from ..ops.length_control import ld_token_weights
from .attention import ATTN_IMPLEMENTATION, enable_varlen_attention, varlen_attention_enabled
from .head import lm_head


def decoder_body(model: torch.nn.Module) -> torch.nn.Module:
    """The module that maps input_ids to final (normed) hidden states: ``model.model`` for
    ``*ForCausalLM`` models, else ``model.get_decoder()`` / ``model.base_model``."""
    body = getattr(model, "model", None)
    if isinstance(body, torch.nn.Module) and body is not model:
        return body
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            body = get_decoder()
            if isinstance(body, torch.nn.Module) and body is not model:
                return body
        except Exception:
            pass
    body = getattr(model, "base_model", None)
    if isinstance(body, torch.nn.Module) and body is not model:
        return body
    raise ValueError(f"model ({type(model).__name__}) has no decoder body (.model / .base_model)")


def lm_head_params(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, d], bias [V] or None) of ``model.get_output_embeddings()``.

    With tied embeddings the weight IS the input embedding matrix, so gradients reach both uses.
    The model's logit scale / soft cap are not included: use ``head.lm_head`` to compute log-probs.
    """
    head = lm_head(model)
    return head.weight, head.bias


def _check_vocabulary(model: torch.nn.Module, batch: PackedBatch) -> None:
    """ValueError naming ``batch.input_ids`` and the id when a token id lies outside the model's
    embedding rows (the embedding would raise an IndexError, or a device-side assert on CUDA).
    Checked where the batch is (on the CPU before it moves, as the loop and trainer build it)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    rows = getattr(getattr(embedding, "weight", None), "shape", (None,))[0]
    if rows is None or batch.input_ids.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(batch.input_ids))
    if low < 0 or high >= rows:
        bad = low if low < 0 else high
        raise ValueError(f"batch.input_ids holds token id {bad}, outside the model's vocabulary [0, {rows})")


def _check_batch(batch) -> None:
    if not isinstance(batch, PackedBatch):
        raise ValueError(f"batch must be a PackedBatch, got {type(batch).__name__}")


def packed_hidden_states(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Final hidden states of a packed batch.

    Args:
        model: a transformers causal LM (``*ForCausalLM``); switched to the ``lrdpo_varlen``
            attention for the call and restored after (kept when it already used it, and switched
            for good, with a warning, when gradient checkpointing is on).
        batch: PackedBatch (moved to the model's device if needed).

    Returns:
        [N, d] in the model's compute dtype, differentiable w.r.t. the model's parameters.
    """
    _check_batch(batch)
    body = decoder_body(model)
    _check_vocabulary(model, batch)
    device = model.get_input_embeddings().weight.device if hasattr(model, "get_input_embeddings") else None
    if device is not None and batch.input_ids.device != device:
        batch = batch.to(device)
    cu = batch.cu_seqlens.to(torch.int32)
    if getattr(model, "is_gradient_checkpointing", False) and torch.is_grad_enabled():
        # Recomputation in backward runs after a temporary switch would have been undone: the
        # switch must be permanent, or the recomputed layers would attend across sequences.
        if model.config._attn_implementation != ATTN_IMPLEMENTATION:
            warnings.warn(
                "gradient checkpointing is on: switching the model to the lrdpo_varlen attention for good "
                "(call lrdpo_fast.attention.enable_varlen_attention(model) to make this explicit)",
                stacklevel=2,
            )
            enable_varlen_attention(model)
    with varlen_attention_enabled(model):
        out = body(
            input_ids=batch.input_ids[None],
            position_ids=batch.position_ids[None],
            use_cache=False,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=int(batch.max_seqlen),
            max_length_k=int(batch.max_seqlen),
        )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[0]


def _match_dtypes(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Cast so hidden and the head share one dtype: the autocast dtype if autocast is on,
    else the weight's dtype (differentiable casts)."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
    else:
        dt = weight.dtype
    cast = lambda t: t if t is None or t.dtype == dt else t.to(dt)  # noqa: E731
    return cast(hidden), cast(weight), cast(bias)


def model_sequence_logprobs(
    model: torch.nn.Module,
    batch: PackedBatch,
    *,
    backend: str = "auto",
    temperature: float = 1.0,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of every sequence of a packed batch, via the fused kernel.

    Args:
        model: transformers causal LM; batch: PackedBatch; backend: "auto" / "torch" / "triton";
        temperature: the model's final logits (after its own logit scale and soft cap, see
            ``head.lm_head``) are divided by it before the softmax.
        token_weights: None or float32 [N]: each token's log-prob times its weight in the sums
            (LD-DPO / SamPO, ``ops.length_control``).

    Returns:
        (logps float32 [S], lengths int64 [S]), S = 2 * batch.num_pairs, chosen/rejected
        interleaved (``packing.split_pairs`` separates them). Differentiable w.r.t. the model.
    """
    from ..ops import sequence_logprobs

    hidden = packed_hidden_states(model, batch)
    head = lm_head(model)
    hidden, weight, bias = _match_dtypes(hidden, head.weight, head.bias)
    return sequence_logprobs(
        hidden,
        weight,
        batch.labels.to(hidden.device),
        batch.cu_seqlens.to(hidden.device),
        bias=bias,
        backend=backend,
        token_weights=None if token_weights is None else token_weights.to(hidden.device),
        **head.kernel_args(temperature),
    )


def precompute_reference_logps(
    model: torch.nn.Module,
    examples: Sequence[PairExample],
    *,
    max_tokens_per_batch: int,
    backend: str = "auto",
    progress: bool = True,
    ld_alpha: float | None = None,
) -> list[PairExample]:
    """Reference log-probs of every pair, computed once (no grad, eval mode, packed, fused).

    Args:
        model: the frozen reference causal LM (its train/eval mode is restored afterwards).
        examples: sequence of PairExample.
        max_tokens_per_batch: int, token budget per packed forward.
        backend: fused-kernel backend; progress: show a tqdm bar.
        ld_alpha: None, or LD-DPO's weight in [0, 1] of the tokens past each pair's shared length
            (the reference summed as the policy will be, ``ops.ld_token_weights``).

    Returns:
        list[PairExample] in the input order, with ref_chosen_logps / ref_rejected_logps set
        (python floats from float32 sums). Save them with ``data.save_jsonl``.
    """
    batches = token_budget_batches(examples, max_tokens_per_batch)
    # Stored values from a previous run are replaced; strip them so packing never mixes.
    stripped = [PairExample(ex.prompt_ids, ex.chosen_ids, ex.rejected_ids, ex.num_truncated_tokens) for ex in examples]
    out: list[PairExample | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc="reference log-probs", unit="pair", disable=not progress)
        with torch.no_grad():
            for idx in batches:
                batch = pack_pairs([stripped[i] for i in idx])
                tw = None if ld_alpha is None else ld_token_weights(batch.labels, batch.cu_seqlens, ld_alpha)
                logps, _ = model_sequence_logprobs(model, batch, backend=backend, token_weights=tw)
                vals = logps.float().cpu().tolist()
                for j, i in enumerate(idx):
                    out[i] = examples[i].with_ref(vals[2 * j], vals[2 * j + 1])
                bar.update(len(idx))
        bar.close()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]
