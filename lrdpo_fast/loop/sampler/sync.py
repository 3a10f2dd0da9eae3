"""The weight sync of ``VLLMSampler`` (a mixin; see the package docstring): check the state
dict against the engine's checkpoint, reload in place (tensors in process, a private folder
across processes), re-pack tied heads, reset the prefix cache, then prove it with the probe."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence

import torch

from .process import Threads
from .verify import engine_probe_logprobs
from .weights import check_weights, is_dtensor, named_tensors, write_safetensors

logger = logging.getLogger(__name__)


class WeightSync:
    """``load_weights`` / ``verify`` for ``VLLMSampler`` (which holds the engine, the layout and
    the checkpoint specs these methods use)."""

    def load_weights(self, weights, *, verify_with=None) -> float:
        """Serve new weights, in place and in memory (no engine restart), then (``verify_sync``)
        prove it; returns the seconds, the check included.

        Args:
            weights: the policy's full weights in checkpoint (transformers) names: a state dict
                (name -> tensor of any float dtype, on any device), an iterable of (name,
                tensor) pairs, or the module itself (its ``state_dict()``; FSDP2 DTensors are
                gathered one at a time; ``_orig_mod.`` wrappers are stripped). Under torchrun in
                the ``rank0`` layout, ranks other than 0 may pass ``{}``. An asleep sampler is
                woken up first (after ``sleep(level=2)`` this is how the weights come back).
            verify_with: the module whose ``sequence_logps(batch)`` scores the check's probe
                (a PolicyLoss-like FSDP2 root; needed when ``weights`` is sharded). Default: the
                given module, or the given tensors in a skeleton of the engine's architecture.

        Raises:
            ValueError naming the tensor, before anything is loaded: a missing, unexpected,
            duplicated, misshaped, non-float or non-finite tensor (on any rank: every rank
            raises). ``WeightSyncError`` (every rank) when the engine then serves other weights
            than these. RuntimeError when closed.
        """
        self._check_open()
        t0 = time.perf_counter()
        with Threads(self._prepack_threads):  # the thread count the engine packed its weights on
            items = self._checked_items(weights)
            self._reload(items)
            self._weights_discarded = False
            if self.verify_sync:
                self.verify(weights if verify_with is None else None, items=items, root=verify_with)
        return time.perf_counter() - t0

    def _checked_items(self, weights) -> list[tuple[str, torch.Tensor]]:
        error, items = None, []
        try:
            items = named_tensors(weights)
            if not (self.layout.mode == "rank0" and self.rank != 0 and not items):
                items = check_weights(items, self._specs)  # rank 0 holds the weights in rank0 mode
        except ValueError as e:
            error = e
        self._agree(error)
        return items

    def _reload(self, items: list[tuple[str, torch.Tensor]]) -> None:
        has_dtensors = self.world_size > 1 and any(is_dtensor(t) for _, t in items)

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in items:
                yield name, (t.full_tensor() if is_dtensor(t) else t)

        error = None
        try:
            if self._asleep:
                self.wake_up()  # weights go into allocated memory (every rank: the state is shared)
            if not self.hosts_engine:
                if has_dtensors:
                    for _ in stream():  # take part in the gathers; rank 0 keeps the result
                        pass
            else:
                if self.in_process:
                    self.llm.collective_rpc(
                        "reload_weights", kwargs={"weights_iterator": stream(), "is_checkpoint_format": True}
                    )
                else:
                    self._reload_from_folder(stream())
                self.llm.collective_rpc("lrdpo_refresh_tied_heads")
                self.llm.reset_prefix_cache()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank
            error = e
        self._agree(error)

    def _reload_from_folder(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """The fallback for an engine in another process: write safetensors, reload from them."""
        if self._weights_dir is None:
            self._weights_dir = self._mkdtemp("lrdpo-sampler-weights-")
            self._fallback_logged = True
            logger.warning(
                "VLLMSampler: the engine runs in another process; load_weights writes the weights to %s "
                "and reloads them from there (VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps a single-device "
                "engine in this process, for in-memory sync)",
                self._weights_dir,
            )
        write_safetensors(dict(weights), os.path.join(self._weights_dir, "model.safetensors"))
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_path": self._weights_dir, "is_checkpoint_format": True}
        )

    def verify(self, weights=None, *, items=None, root=None) -> float:
        """Check that the engine serves ``weights`` (a module, a state dict, pairs) or, with
        ``root``, what ``root.sequence_logps`` scores; returns the largest probe difference.
        Collective under torchrun (every rank calls it). Raises ``WeightSyncError``."""
        from .verify import check_sync

        error, worst = None, 0.0
        try:
            worst = check_sync(self, weights=weights, items=items, root=root)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank
            error = e
        self._agree(error)
        return worst

    def probe_logprobs(self, ids: Sequence[int]) -> list[float]:
        """The engine's log p(ids[t] | ids[:t]), t = 1 .. T-1 (on a rank that hosts an engine)."""
        return engine_probe_logprobs(self.llm, ids)
