"""``VLLMSampler``: k samples per prompt from the live policy, weights synced in memory and proven.

The only package of lrdpo-fast that imports vllm, and only inside functions: importing it costs
neither vllm nor transformers. Its files, one job each: ``specs`` (EngineSpec, GenerationSpec:
every sampler knob validated once), ``layout`` (ranks and engines under torchrun), ``process``
(what an in-process engine changes and is put back), ``engine`` (folders, environment, start),
``prompts`` (token ids and request seeds), ``weights`` (checkpoint specs, state-dict checks,
safetensors, tied heads), ``worker_ext`` (methods mixed into vLLM's workers), ``verify`` (the
sync probe, ``WeightSyncError``), ``core`` (``VLLMSampler``).

    sampler = VLLMSampler("model_dir", seed=0, dtype="float32")
    samples = sampler.generate(["Hello", [{"role": "user", "content": "Hi"}]], n=4)
    trainer.train()
    sampler.load_weights(trainer.export_state_dict())   # or the module itself; in memory
    sampler.close()                                      # or `with VLLMSampler(...) as sampler:`

Prompts. A string is tokenized like the trainer tokenizes a text prompt (``add_special_tokens=
False``, then the tokenizer's BOS prepended when it has one), a list of chat messages is rendered
with the tokenizer's chat template and ``add_generation_prompt=True`` (no BOS added: the template
owns it), a list of ints is used as is. The engine gets the token ids, so ``Sample.prompt_ids`` is
exactly what it conditioned on.

Seeds. Each sample is its own vLLM request (``n`` requests with ``n=1`` per prompt), seeded with
``request_seed(seed, prompt_index, sample_index)`` where ``seed`` is ``generate(seed=...)`` or the
sampler's seed and ``prompt_index`` the position in ``prompts``. A sample therefore depends only on
the weights, its prompt, the sampling arguments and those three numbers: not on the batch, on
``n`` (the first samples of n=8 are those of n=4), on how prompts are sharded over ranks, or on
what ran before. A resumed run that calls ``generate`` again with the same prompts and seed gets
the same samples (up to float noise from batch shapes: fp32 on one machine reproduced exactly
here). Pass a different ``seed`` per iteration of a loop to get fresh samples.

Weight sync. ``load_weights`` checks the state dict against the checkpoint the engine started from
(names and shapes read from its safetensors headers; the engine's own parameters cannot be used:
the CPU backend repacks them), refuses a partial, misshaped, unexpected or non-finite one with a
ValueError naming the tensor before anything is loaded, then
- engine in this process (the default: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set when unset):
  ``collective_rpc("reload_weights", weights_iterator=..., is_checkpoint_format=True)``; the
  tensors are passed as they are (on a GPU nothing goes through the CPU);
- engine in another process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``, tensor parallel workers, the
  CPU layout under torchrun): the fallback, logged once: the weights are written to a private
  safetensors folder and reloaded from it (``reload_weights(weights_path=...)``), still without
  restarting the engine;
then every layer whose weight another layer shares (a tied LM head) is re-packed
(``worker_ext``: vLLM's reload processes a layer when its checkpoint tensors arrive, and a tied
head has none of its own, so on the CPU it kept serving the old head), and the prefix cache is
reset, so no KV block computed by the old weights is reused. On the CPU backend the engine
starts and every reload runs on one torch thread count (``cpu_threads``, else the process's
count at construction): oneDNN chooses the packed weight layout by the thread count and shares
its compiled matmuls between layers of one shape, so a reload on another count served garbage
for some shapes (seen with head_dim 64).

Verified (``verify_sync=True``, the default): after the reload the engine's prompt log-probs of a
fixed 16-token probe are compared with the same tokens' log-probs from the weights that were
handed over, computed on the training side through the fused kernel (``verify``). A difference
above the engine dtype's tolerance raises ``WeightSyncError`` naming the first diverging
position and the largest difference, on every rank, before anything samples from wrong weights;
nothing is repaired silently (a user who wants to go on can restart the engine from the saved
policy folder). Under torchrun pass ``load_weights(fsdp_module, verify_with=policy_root)``: the
probe is scored through the root, every rank taking part.

The CPU backend. vLLM's CPU build reserves ``gpu_memory_utilization`` of the machine's RAM for the
KV cache unless ``VLLM_CPU_KVCACHE_SPACE`` (GiB) or ``kv_cache_memory_bytes`` is set; the sampler
passes ``kv_cache_memory_bytes`` sized to ``max_num_seqs`` full sequences of the model (64 MiB to
1 GiB, ``kv_cache.py``) when neither is: the cache is zeroed at start and stays resident. Chunked prefill is off by default on the CPU
(``enable_chunked_prefill=False``): with it, a seeded request whose prompt is split across engine
steps crashes vLLM 0.32's CPU runner (it rewinds the request's generator, which a CPU generator
cannot do). An in-process vLLM engine reseeds the global RNGs and
replaces ``torch.set_num_threads``: the sampler puts both back after start-up so a trainer in the
same process keeps its random streams and thread count.

Under torchrun (``WORLD_SIZE`` > 1). Every rank constructs the sampler and calls ``generate`` and
``load_weights`` (they are collective); every rank gets the full list of samples, in prompt order.
``LRDPO_SAMPLER_SHARDING`` picks the layout (default ``auto``: ``replicate`` with CUDA, ``rank0``
otherwise):
- ``replicate`` on CUDA: every rank starts an in-process engine with vLLM's
  ``distributed_executor_backend="external_launcher"``, ``tensor_parallel_size`` ranks per engine
  and ``data_parallel_size = world / tensor_parallel_size`` engines; data-parallel rank ``d`` samples
  the prompts ``i`` with ``i % data_parallel_size == d``; the results are all-gathered. Weight sync
  needs the full weights on every rank: pass the FSDP2 module (``sampler.load_weights(
  trainer.model)``): its DTensors are gathered one at a time as vLLM consumes them, never a full
  extra copy (``trainer.export_state_dict()`` holds the weights on rank 0 only and is refused on
  the other ranks here).
- ``replicate`` on the CPU: every rank starts its own engine in a separate process (an in-process
  engine would take over torchrun's process group) and samples its share ``i % world == rank``.
- ``rank0``: rank 0 alone hosts an engine, in a separate process, and samples everything; other
  ranks wait and receive the samples. Pass the weights on rank 0 (``export_state_dict()`` gives
  ``{}`` elsewhere, which is accepted there) or the FSDP2 module on every rank.
Run it like any torchrun script (``torchrun --nproc_per_node K script.py``, with an
``if __name__ == "__main__":`` guard: engines in separate processes are spawned).
"""

from .core import VLLMSampler
from .layout import SHARDING_ENV, SHARDING_MODES
from .process import Threads as _Threads  # noqa: F401 - the name tests and old callers import
from .prompts import request_seed
from .specs import EngineSpec, GenerationSpec, SamplerSection
from .verify import WeightSyncError, sync_tolerance
from .weights import TensorSpec, check_weights, checkpoint_specs, refresh_shared_weight_layers

__all__ = [
    "SHARDING_ENV",
    "SHARDING_MODES",
    "EngineSpec",
    "GenerationSpec",
    "TensorSpec",
    "VLLMSampler",
    "WeightSyncError",
    "check_weights",
    "checkpoint_specs",
    "refresh_shared_weight_layers",
    "request_seed",
    "SamplerSection",
    "sync_tolerance",
]
