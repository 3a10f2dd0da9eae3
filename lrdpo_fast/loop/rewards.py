"""Rewards: one float per (prompt, response), three kinds behind one call.

    scores = reward(prompts, responses)      # list[float], len(responses)

- ``RewardModel(path)``: a local ``AutoModelForSequenceClassification`` folder with one output (a
  Bradley-Terry reward model), its own tokenizer rendering (prompt, response);
- ``CallableReward(fn_or_spec)``: a rule, any Python callable or a ``"package.module:function"``
  spec, called as ``fn(prompts, responses) -> list of floats``;
- ``ImplicitReward(policy, ref_model, tokenizer)``: DICE's implicit reward
  ``log pi(y|x) - log ref(y|x)`` summed over the response tokens (no beta), packed and fused.

Inputs: ``prompts`` and ``responses`` are lists of the same length (prompt i is answered by
response i); a prompt is a str or a list of chat messages ``[{"role", "content"}, ...]``, a
response a str. ``ImplicitReward`` also takes token-id lists for both (``Sample.prompt_ids`` and
``Sample.response_ids``, so it scores exactly what was sampled); ``Reward.accepts_token_ids`` says
which reward does.

Every reward's output goes through the same check, ``check_scores``: a reward that raises,
returns the wrong count, a non-number (``bool`` counts as 0/1), NaN or inf is a ``ValueError``
naming the reward and the first bad index, raised by the call itself, so before a caller writes
anything.

Imports torch; transformers only inside ``RewardModel``.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["CallableReward", "ImplicitReward", "Reward", "RewardModel", "check_scores", "load_callable"]


# ---- shared validation -------------------------------------------------------------------------
def _is_ids(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _is_messages(x: Any) -> bool:
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in x)
    )


def check_inputs(prompts: Any, responses: Any, *, token_ids: bool = False, name: str = "reward") -> tuple[list, list]:
    """Validate a reward call's inputs; returns them as lists.

    Args:
        prompts: sequence of str | chat messages (| list[int] when ``token_ids``).
        responses: sequence of str (| list[int] when ``token_ids``), same length as ``prompts``.
        token_ids: whether token-id lists are accepted; name: the reward, for messages.

    Raises:
        ValueError naming the reward and the argument (``prompts[i]`` / ``responses[i]``).
    """
    for arg, xs in (("prompts", prompts), ("responses", responses)):
        if isinstance(xs, (str, bytes, Mapping)) or not isinstance(xs, Sequence):
            raise ValueError(f"reward {name}: {arg} must be a list, got {type(xs).__name__}")
    if len(prompts) != len(responses):
        raise ValueError(
            f"reward {name}: prompts and responses must have the same length, got {len(prompts)} and {len(responses)}"
        )
    kinds = "a str, a list of chat messages" + (" or a list of token ids" if token_ids else "")
    for i, p in enumerate(prompts):
        if not (isinstance(p, str) or _is_messages(p) or (token_ids and _is_ids(p) and len(p) > 0)):
            raise ValueError(f"reward {name}: prompts[{i}] must be {kinds}, got {type(p).__name__}")
    kinds = "a str" + (" or a list of token ids" if token_ids else "")
    for i, r in enumerate(responses):
        if not (isinstance(r, str) or (token_ids and _is_ids(r))):
            raise ValueError(f"reward {name}: responses[{i}] must be {kinds}, got {type(r).__name__}")
    return list(prompts), list(responses)


def check_scores(scores: Any, n: int, name: str) -> list[float]:
    """A reward's output as ``list[float]`` of length ``n``, or a ValueError.

    Args:
        scores: what the reward returned: a list/tuple of real numbers (``bool`` is 0/1, numpy
            scalars are fine), or a 1-D numpy array / torch tensor.
        n: expected count (number of responses); name: the reward, named in every error.

    Raises:
        ValueError naming the reward and the first bad index: not a sequence, wrong count, a
        non-number, NaN or inf.
    """
    if isinstance(scores, torch.Tensor):
        if scores.dim() != 1:
            raise ValueError(f"reward {name} returned a tensor of shape {tuple(scores.shape)}, expected [{n}]")
        scores = scores.detach().cpu().tolist()
    elif type(scores).__module__ == "numpy" and hasattr(scores, "tolist"):
        if getattr(scores, "ndim", 1) != 1:
            raise ValueError(f"reward {name} returned an array of shape {scores.shape}, expected ({n},)")
        scores = scores.tolist()
    if isinstance(scores, (str, bytes, Mapping)) or not isinstance(scores, Sequence):
        raise ValueError(f"reward {name} returned {type(scores).__name__}, expected a list of {n} floats")
    if len(scores) != n:
        raise ValueError(f"reward {name} returned {len(scores)} scores for {n} responses")
    out = []
    for i, v in enumerate(scores):
        if not isinstance(v, numbers.Real):
            raise ValueError(f"reward {name} returned a non-number at index {i}: {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"reward {name} returned {v} at index {i} (scores must be finite)")
        out.append(v)
    return out


class Reward:
    """Base of every reward: ``reward(prompts, responses) -> list[float]``.

    ``__call__`` validates the inputs (``check_inputs``), calls ``_score`` (subclasses), turns any
    exception it raises into a ``ValueError`` naming the reward, and validates the output
    (``check_scores``). An empty call returns ``[]`` without scoring.

    Attributes:
        name: str, how errors name this reward.
        accepts_token_ids: bool, whether prompts/responses may be token-id lists.
    """

    name: str = "reward"
    accepts_token_ids: bool = False
    uses_truncation: bool = False  # whether _score takes ``truncated`` (the implicit reward)

    def __call__(
        self, prompts: Sequence, responses: Sequence, *, truncated: Sequence[bool] | None = None
    ) -> list[float]:
        """Scores, float [R], of R (prompt, response) pairs. ``truncated``: optional bool [R], True
        for a response cut by the generation budget (rewards that score tokens, like the implicit
        reward, then score no EOS after it; the others ignore it)."""
        prompts, responses = check_inputs(prompts, responses, token_ids=self.accepts_token_ids, name=self.name)
        if truncated is not None:
            truncated = list(truncated)
            if len(truncated) != len(responses) or not all(isinstance(t, bool) for t in truncated):
                raise ValueError(
                    f"reward {self.name}: truncated must be a list of {len(responses)} bools, one per response"
                )
        if not responses:
            return []
        try:
            if self.uses_truncation:
                scores = self._score(prompts, responses, truncated=truncated)
            else:
                scores = self._score(prompts, responses)
        except Exception as e:  # noqa: BLE001 - any failure of a reward is reported as its own
            if isinstance(e, ValueError) and str(e).startswith(f"reward {self.name}"):
                raise
            raise ValueError(f"reward {self.name} raised {type(e).__name__}: {e}") from e
        return check_scores(scores, len(responses), self.name)

    def _score(self, prompts: list, responses: list) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# ---- rules ---------------------------------------------------------------------------------------
def load_callable(spec: str) -> Callable:
    """The callable named by ``"package.module:function"`` (the attribute may be dotted,
    ``"pkg.mod:Class.method"``). Raises ValueError naming the spec when the module cannot be
    imported, the attribute is missing, or it is not callable."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"reward spec {spec!r} must look like 'package.module:function'")
    module_name, attr = spec.split(":")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".") + attr.split(".")):
        raise ValueError(f"reward spec {spec!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError and whatever the module raises on import
        raise ValueError(f"reward spec {spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward spec {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward spec {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


class CallableReward(Reward):
    """A rule as a reward: ``fn(prompts, responses) -> list of floats``.

    Args:
        fn_or_spec: a callable, or a ``"package.module:function"`` string imported now (a
            ValueError names the spec when it cannot be imported or is not callable).

    Prompts reach ``fn`` as given (str or chat messages), responses as str.
    """

    def __init__(self, fn_or_spec: Callable | str):
        if isinstance(fn_or_spec, str):
            self.fn = load_callable(fn_or_spec)
            self.name = fn_or_spec
        elif callable(fn_or_spec):
            self.fn = fn_or_spec
            module = getattr(fn_or_spec, "__module__", None)
            qual = getattr(fn_or_spec, "__qualname__", None) or type(fn_or_spec).__qualname__
            self.name = f"{module}:{qual}" if module else qual
        else:
            raise ValueError(
                f"fn_or_spec must be a callable or a 'package.module:function' string, got {type(fn_or_spec).__name__}"
            )

    def _score(self, prompts, responses):
        return self.fn(prompts, responses)


# ---- reward models --------------------------------------------------------------------------------
_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def _resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be 'auto', one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")


class RewardModel(Reward):
    """A Bradley-Terry reward model from a LOCAL folder: one scalar per (prompt, response).

    Args:
        path: a ``save_pretrained`` folder of an ``AutoModelForSequenceClassification`` with one
            output (``num_labels == 1``) and its tokenizer; weights must be safetensors
            (``use_safetensors=True``), nothing is fetched from a hub.
        batch_size: sequences per forward (sorted by length first, so padding is small).
        device: "cpu", "cuda", "cuda:1", a torch.device, or None = cuda when available.
        dtype: "auto" (bf16 on a CUDA device that supports it, else fp32), "fp32", "bf16",
            "fp16" or a torch.dtype.
        max_length: cap on tokens per rendered sequence; longer ones keep their LAST
            ``max_length`` tokens (the response end, where the score is read; ``num_truncated``
            counts them). None: the model's ``max_position_embeddings`` when it has one.
        trust_remote_code: passed to transformers; off unless asked.
        progress: show a tqdm bar over the batches.

    Rendering: when the model's tokenizer has a chat template, the conversation ``prompt
    messages (a str prompt is one user message) + [{"role": "assistant", "content": response}]``
    is rendered with it (no generation prompt) and tokenized without adding special tokens (the
    template owns them). Without a chat template the text is ``prompt + response`` (plain
    concatenation, no separator) tokenized with the tokenizer's special tokens; a chat-message
    prompt is then refused (ValueError).

    Scoring: for decoder reward models (transformers' generic ``*ForSequenceClassification``:
    Llama, Mistral, Qwen2, Gemma, ...) the decoder body runs on the padded batch with explicit
    position ids, and the score head is applied to the hidden state of each row's LAST REAL token,
    so the score does not depend on the padding side (the tokenizer's ``padding_side`` is used)
    nor on whether the pad token also occurs in the text (e.g. pad = EOS). Other architectures
    use the model's own pooled output on right-padded batches. No gradients; eval mode.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "auto",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        progress: bool = False,
    ):
        if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
            raise ValueError(f"path {path!r} is not a local folder (a save_pretrained reward model)")
        if not any(Path(path).glob("*.safetensors")):
            raise ValueError(f"path {str(path)!r} holds no .safetensors weights (only safetensors are loaded)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if max_length is not None and (
            not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2
        ):
            raise ValueError(f"max_length must be an int >= 2 or None, got {max_length!r}")
        if not isinstance(trust_remote_code, bool):
            raise ValueError(f"trust_remote_code must be a bool, got {trust_remote_code!r}")
        try:
            self.device = (
                torch.device(device)
                if device is not None
                else torch.device("cuda" if torch.cuda.is_available() else "cpu")
            )
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {device!r} is not a torch device ({e})") from e
        self.dtype = _resolve_dtype(dtype, self.device)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        self.name = f"RewardModel({self.path})"
        self.batch_size = batch_size
        self.progress = progress
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path,
            dtype=self.dtype,
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
        if getattr(model.config, "num_labels", None) != 1:
            raise ValueError(
                f"path {self.path!r}: a reward model has one output (num_labels=1), "
                f"this one has {getattr(model.config, 'num_labels', None)}"
            )
        self.model = model.to(self.device).eval().requires_grad_(False)
        tok = self.tokenizer
        self.pad_token_id = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
        if max_length is None:
            max_length = getattr(model.config, "max_position_embeddings", None)
        self.max_length = max_length
        self.num_truncated = 0
        self._body, self._head = self._decoder_parts(model)
        if self._head is None and getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.pad_token_id  # the model's own pooling needs it for batches

    @staticmethod
    def _decoder_parts(model):
        try:
            from transformers.modeling_layers import GenericForSequenceClassification
        except ImportError:  # older transformers: the model's own forward
            return None, None
        if isinstance(model, GenericForSequenceClassification):
            body = getattr(model, model.base_model_prefix, None)
            head = getattr(model, "score", None)
            if isinstance(body, torch.nn.Module) and isinstance(head, torch.nn.Module):
                return body, head
        return None, None

    @property
    def has_chat_template(self) -> bool:
        """Whether (prompt, response) is rendered with the tokenizer's chat template."""
        return getattr(self.tokenizer, "chat_template", None) is not None

    def render(self, prompt: str | list, response: str) -> str:
        """The text the model scores for one (prompt, response) (see the class docstring)."""
        if self.has_chat_template:
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
            msgs.append({"role": "assistant", "content": response})
            return self.tokenizer.apply_chat_template(msgs, tokenize=False)
        if not isinstance(prompt, str):
            raise ValueError("a chat-message prompt needs a chat template, and this reward model's tokenizer has none")
        return prompt + response

    def encode(self, prompt: str | list, response: str) -> list[int]:
        """Token ids of ``render(prompt, response)`` before any ``max_length`` cut."""
        text = self.render(prompt, response)
        return list(self.tokenizer(text, add_special_tokens=not self.has_chat_template)["input_ids"])

    def _forward(self, seqs: list[list[int]]) -> list[float]:
        B, L = len(seqs), max(len(s) for s in seqs)
        # The decoder path honours the tokenizer's padding side; the model's own pooling gets the
        # right padding it is usually trained with.
        left = self._head is not None and getattr(self.tokenizer, "padding_side", "right") == "left"
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for j, s in enumerate(seqs):
            sl = slice(L - len(s), L) if left else slice(0, len(s))
            ids[j, sl] = torch.tensor(s, dtype=torch.long)
            mask[j, sl] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self._head is None:
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        else:
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self._body(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            last = torch.full((B,), L - 1, device=self.device) if left else mask.sum(-1) - 1
            logits = self._head(hidden[torch.arange(B, device=self.device), last])
        if logits.dim() != 2 or logits.shape != (B, 1):
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, expected ({B}, 1)")
        return logits[:, 0].float().cpu().tolist()

    def _score(self, prompts, responses):
        seqs = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            try:
                ids = self.encode(p, r)
            except ValueError as e:
                raise ValueError(f"reward {self.name}: prompts[{i}]/responses[{i}]: {e}") from e
            if not ids:
                raise ValueError(f"reward {self.name}: prompts[{i}]/responses[{i}] render to no tokens")
            if self.max_length is not None and len(ids) > self.max_length:
                ids = ids[-self.max_length :]
                self.num_truncated += 1
            seqs.append(ids)
        order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
        out = [0.0] * len(seqs)
        from tqdm.auto import tqdm

        starts = range(0, len(order), self.batch_size)
        with torch.no_grad():
            for start in tqdm(starts, desc="reward model", unit="batch", disable=not self.progress):
                idx = order[start : start + self.batch_size]
                for i, v in zip(idx, self._forward([seqs[i] for i in idx])):
                    out[i] = v
        return out


# ---- DICE's implicit reward -------------------------------------------------------------------------
class ImplicitReward(Reward):
    """DICE's implicit reward: ``log pi(y|x) - log ref(y|x)``, summed over the response tokens.

    DPO's implicit reward without beta (``beta * implicit`` is the Trainer's ``rewards/chosen``
    for the same pair and models), enough to rank responses.

    Args:
        policy: the current DPO policy, a transformers ``*ForCausalLM`` (fp32/bf16/fp16).
        ref_model: its reference (may live on another device).
        tokenizer: the policy's tokenizer, the same one the Trainer uses (it renders text and
            chat prompts and supplies the EOS); may be None when every input is token ids (then
            no EOS is appended, unlike a Trainer with a tokenizer).
        max_tokens_per_batch: int >= 2, token budget of one packed forward.
        backend: fused-kernel backend ("auto", "torch", "triton").
        progress: show a tqdm bar over the packed batches.
        max_length, max_prompt_length: the Trainer's truncation (``TrainConfig``'s fields of the
            same names; the loop passes them): the prompt keeps its end, the response its start,
            so a response is scored on the tokens training will see.

    Each (prompt, response) is tokenized exactly as the Trainer tokenizes a pair
    (``data.tokenize_record``): token ids are used as given, an EOS is appended unless the
    response already ends with it, so the score is the reward of the tokens training will see.
    Responses to the same prompt are packed two per ``PairExample`` (a lone one gets a one-token
    dummy partner whose score is discarded), into ``data.pack_pairs`` batches of at most
    ``max_tokens_per_batch`` tokens; ``model.model_sequence_logprobs`` runs each model's decoder
    body and feeds the hidden states and LM head to the fused kernel (no [tokens x vocab]
    logits), under ``torch.no_grad`` in eval mode (each model's mode is restored).

    Returns (on call) list[float]: float64 differences of the two float32 sums.
    """

    accepts_token_ids = True
    uses_truncation = True

    def __init__(
        self,
        policy: torch.nn.Module,
        ref_model: torch.nn.Module,
        tokenizer,
        *,
        max_tokens_per_batch: int = 8192,
        backend: str = "auto",
        progress: bool = False,
        max_length: int | None = None,
        max_prompt_length: int | None = None,
    ):
        for arg, m in (("policy", policy), ("ref_model", ref_model)):
            if not isinstance(m, torch.nn.Module):
                raise ValueError(f"{arg} must be a torch.nn.Module (a causal LM), got {type(m).__name__}")
        if (
            not isinstance(max_tokens_per_batch, int)
            or isinstance(max_tokens_per_batch, bool)
            or max_tokens_per_batch < 2
        ):
            raise ValueError(f"max_tokens_per_batch must be an int >= 2, got {max_tokens_per_batch!r}")
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
        self.policy, self.ref_model, self.tokenizer = policy, ref_model, tokenizer
        self.max_tokens_per_batch = max_tokens_per_batch
        for arg, v in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int) or v < (2 if arg == "max_length" else 1)
            ):
                raise ValueError(f"{arg} must be None or an int >= {2 if arg == 'max_length' else 1}, got {v!r}")
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.backend = backend
        self.progress = progress
        self.name = "ImplicitReward"
        self.policy_root = None  # see through_root

    def through_root(self, root: torch.nn.Module | None) -> None:
        """Score the policy through ``root`` (the Trainer's ``PolicyLoss``, FSDP2-sharded under
        torchrun: only its ``sequence_logps`` gathers the full weights) instead of calling the
        policy module directly; ``None`` goes back to the module. Under torchrun every rank must
        then score the same responses in the same order (the loop's score phase does)."""
        if root is not None and not (
            isinstance(root, torch.nn.Module) and callable(getattr(root, "sequence_logps", None))
        ):
            raise ValueError(
                f"root must be None or a PolicyLoss-like module with sequence_logps, got {type(root).__name__}"
            )
        self.policy_root = root

    def tokenize(self, prompt, response, truncated: bool = False) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids incl. EOS) of one (prompt, response), as the Trainer sees it
        (no EOS appended when ``truncated``: the pair record's ``chosen_truncated``)."""
        from ..data.records import tokenize_record

        cap = {"max_length": self.max_length, "max_prompt_length": self.max_prompt_length}
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if response == "" or (isinstance(response, list) and response in ([], [eos])):
            # an empty answer (EOS at once): never a training pair (build_pairs drops it), but a
            # sampler produces them and each still gets a score, that of its EOS alone (no EOS
            # known: no token to score, 0); the prompt is tokenized as for any response
            ex = tokenize_record({"prompt": prompt, "chosen": [0], "rejected": [0]}, self.tokenizer, **cap)
            return ex.prompt_ids, [] if eos is None else [eos]
        record = {"prompt": prompt, "chosen": response, "rejected": response, "chosen_truncated": truncated}
        ex = tokenize_record(record, self.tokenizer, **cap)
        return ex.prompt_ids, ex.chosen_ids

    def _examples(self, seqs):
        """Pair responses that share a prompt: (examples, slots) with slots[k] = (i_chosen,
        i_rejected or None) the response indices behind examples[k]."""
        from ..data.records import PairExample

        by_prompt: dict[tuple, list[int]] = {}
        for i, (p, r) in enumerate(seqs):
            if r:  # an empty response without an EOS has no token to score (its score is 0)
                by_prompt.setdefault(tuple(p), []).append(i)
        examples, slots = [], []
        budget = self.max_tokens_per_batch

        def lone(i):
            p, r = seqs[i]
            ex = PairExample(list(p), list(r), [r[0]])
            if ex.num_tokens > budget:
                raise ValueError(
                    f"max_tokens_per_batch={budget} is smaller than prompts[{i}] + responses[{i}] "
                    f"packed with a one-token partner ({ex.num_tokens} tokens)"
                )
            examples.append(ex)
            slots.append((i, None))

        for idx in by_prompt.values():
            for a, b in zip(idx[0::2], idx[1::2]):
                ex = PairExample(list(seqs[a][0]), list(seqs[a][1]), list(seqs[b][1]))
                if ex.num_tokens <= budget:
                    examples.append(ex)
                    slots.append((a, b))
                else:
                    lone(a)
                    lone(b)
            if len(idx) % 2:
                lone(idx[-1])
        return examples, slots

    def _score(self, prompts, responses, truncated=None):
        from ..data.packing import pack_pairs, token_budget_batches
        from ..model.packed import model_sequence_logprobs

        cut = truncated or [False] * len(responses)
        seqs = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            try:
                seqs.append(self.tokenize(p, r, cut[i]))
            except ValueError as e:
                raise ValueError(f"reward {self.name}: prompts[{i}]/responses[{i}]: {e}") from e
        try:
            examples, slots = self._examples(seqs)
        except ValueError as e:
            raise ValueError(f"reward {self.name}: {e}") from e
        batches = token_budget_batches(examples, self.max_tokens_per_batch)
        out: list[float | None] = [None] * len(seqs)
        modes = [(m, m.training) for m in (self.policy, self.ref_model)]
        root_device = None if self.policy_root is None else next(self.policy_root.parameters()).device
        from tqdm.auto import tqdm

        try:
            for m, _ in modes:
                m.eval()
            with torch.no_grad():
                for idx in tqdm(batches, desc="implicit reward", unit="batch", disable=not self.progress):
                    batch = pack_pairs([examples[k] for k in idx])
                    if self.policy_root is not None:
                        pol = self.policy_root.sequence_logps(batch.to(root_device)).logps
                    else:
                        pol, _ = model_sequence_logprobs(self.policy, batch, backend=self.backend)
                    ref, _ = model_sequence_logprobs(self.ref_model, batch, backend=self.backend)
                    diff = (pol.detach().double().cpu() - ref.detach().double().cpu()).tolist()
                    for j, k in enumerate(idx):
                        for side, i in enumerate(slots[k]):
                            if i is not None:
                                out[i] = diff[2 * j + side]
        finally:
            for m, was_training in modes:
                m.train(was_training)
        return [0.0 if v is None else v for v in out]  # None: an empty response with nothing to score
