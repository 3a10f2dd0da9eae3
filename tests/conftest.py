"""Shared test set-up. TRITON_INTERPRET must be set before triton compiles any kernel, so it is the
first thing here. Without CUDA the Triton backend runs on CPU tensors through Triton's interpreter
(TRITON_INTERPRET=1); with CUDA it stays unset, so the Triton tests run the compiled kernels users
get (tensor-core block sizes, 16-bit dots), and ``pytest -m gpu`` selects the GPU-only set."""

import os

import torch  # noqa: E402  (importing torch does not import triton)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI (CI=true) replays the same examples every run so main stays green for the same code;
# locally hypothesis explores new ones each time.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# ---- one vLLM engine for the whole session (the sampler and the loop tests share it) --------------
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder with ``helpers.tiny_model("llama", seed=0)`` (fp32) and ``helpers.tiny_tokenizer()``,
    written with ``save_pretrained``: what the session's vLLM engine starts from."""
    from helpers import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama", seed=0).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def vllm_sampler(tiny_model_dir):
    """A ``VLLMSampler`` over ``tiny_model_dir`` (in-process engine, fp32, eager, max_model_len 256,
    KV cache sized by the sampler on the CPU), started once per session (~5-20 s). Skipped without vllm.

    Shared state: a test that calls ``load_weights`` must load ``tiny_model("llama", seed=0)``
    back before it ends (``try/finally``), and must not ``close`` or ``sleep`` it.
    """
    pytest.importorskip("vllm")
    from lrdpo_fast.loop.sampler import VLLMSampler

    sampler = VLLMSampler(str(tiny_model_dir), seed=0, dtype="float32", max_model_len=256, enforce_eager=True)
    yield sampler
    sampler.close()
