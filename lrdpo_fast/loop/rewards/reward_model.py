"""``RewardModel(path)``: a local ``AutoModelForSequenceClassification`` folder with one output
(a Bradley-Terry reward model), its own tokenizer rendering (prompt, response).

Imports torch; transformers only when a ``RewardModel`` is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .base import Reward

__all__ = ["RewardModel"]


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
