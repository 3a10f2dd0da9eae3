"""``ImplicitReward(policy, ref_model, tokenizer)``: DICE's implicit reward
``log pi(y|x) - log ref(y|x)`` summed over the response tokens (no beta), packed and fused.

Imports torch; the data and model layers when it scores.
"""

from __future__ import annotations

import torch

from .base import Reward

__all__ = ["ImplicitReward"]


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
        from ...data.records import tokenize_record

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
        from ...data.records import PairExample

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
        from ...data.packing import pack_pairs, token_budget_batches
        from ...model.packed import model_sequence_logprobs

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
