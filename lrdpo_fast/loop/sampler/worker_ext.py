"""Methods vLLM mixes into its workers (``worker_extension_cls``), so the sampler calls them by
name through ``collective_rpc``, in this process or another, with nothing pickled."""

from __future__ import annotations

QUALNAME = "lrdpo_fast.loop.sampler.worker_ext.SamplerWorkerExtension"


class SamplerWorkerExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker."""

    def lrdpo_refresh_tied_heads(self) -> list[str]:
        """Re-pack tied heads after a reload (``weights.refresh_shared_weight_layers``)."""
        from .weights import refresh_shared_weight_layers

        return refresh_shared_weight_layers(self.model_runner.model)
