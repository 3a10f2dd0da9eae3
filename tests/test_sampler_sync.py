"""Weight sync on the shapes users have: a tied-embedding Qwen2 (head_dim 64, qkv bias) and an
untied Llama whose fused qkv shape made vLLM's CPU backend pick another packed layout at another
thread count. Each model gets its own engine; every parameter (embeddings and norms included) is
perturbed before the sync, and the engine's greedy tokens and their log-probs must equal
transformers' on the same weights, before and after."""

from __future__ import annotations

import pytest
from helpers import assert_serves, perturbed, tiny_model, tiny_tokenizer

vllm = pytest.importorskip("vllm")
from lrdpo_fast.loop.sampler import VLLMSampler  # noqa: E402

PROMPTS = ["The quick brown fox", "Hello", "What is the capital of France?"]
SHAPES = {
    "qwen2-tied": dict(kind="qwen2", tie_word_embeddings=True, head_dim=64, num_attention_heads=1),
    "llama-untied-head64": dict(kind="llama", tie_word_embeddings=False, head_dim=64, num_attention_heads=1),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_sync_serves_the_given_weights(shape, tmp_path):
    spec = dict(SHAPES[shape])
    kind = spec.pop("kind")
    tok = tiny_tokenizer()
    start = tiny_model(kind, seed=0, **spec)
    if spec["tie_word_embeddings"]:
        assert start.lm_head.weight is start.model.embed_tokens.weight
    start.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with VLLMSampler(str(tmp_path), seed=0, dtype="float32", max_model_len=128, enforce_eager=True) as sampler:
        assert_serves(sampler, start, PROMPTS)
        for round_ in (1, 2):  # twice: a second sync must not meet state the first one left
            policy = perturbed(tiny_model(kind, seed=0, **spec), seed=round_)
            sampler.load_weights(policy.state_dict())
            assert_serves(sampler, policy, PROMPTS)


def test_a_dropped_reload_raises_weight_sync_error(vllm_sampler, monkeypatch):
    """The engine silently ignores the reload (as a stale path would): the probe sees it, the
    error names the position and the difference, and the next real sync passes again."""
    import lrdpo_fast as lf

    llm = vllm_sampler.llm
    real = llm.collective_rpc

    def dropping(method, *args, **kwargs):
        return [None] if method == "reload_weights" else real(method, *args, **kwargs)

    monkeypatch.setattr(llm, "collective_rpc", dropping)
    with pytest.raises(lf.WeightSyncError, match=r"first differ at position \d+, largest difference") as info:
        vllm_sampler.load_weights(tiny_model("llama", seed=1).state_dict())
    assert info.value.max_diff > info.value.tolerance and 1 <= info.value.position < 16
    monkeypatch.undo()
    start = tiny_model("llama", seed=0)
    assert vllm_sampler.verify(start) < 1e-4  # the engine still serves the start weights
    vllm_sampler.load_weights(start)  # a module: its own forward is the reference


def test_verification_can_be_turned_off(vllm_sampler):
    new, start = tiny_model("llama", seed=1).state_dict(), tiny_model("llama", seed=0).state_dict()
    try:
        vllm_sampler.verify_sync = False
        vllm_sampler.load_weights(new)
        assert vllm_sampler.verify(new) < 1e-4  # on demand
    finally:
        vllm_sampler.verify_sync = True
        vllm_sampler.load_weights(start)


def test_closing_a_second_engine_leaves_the_first_serving(vllm_sampler, tiny_model_dir):
    """vLLM's in-process shutdown tears down the process's model-parallel groups, which every
    in-process engine shares: a second sampler closed while the session's lives must not break it."""
    before = vllm_sampler.generate(["Hello"], n=1, temperature=0.0, max_new_tokens=4)
    with VLLMSampler(str(tiny_model_dir), seed=0, dtype="float32", max_model_len=128, enforce_eager=True) as other:
        assert other.generate(["Hello"], n=1, temperature=0.0, max_new_tokens=4) == before
    assert vllm_sampler.generate(["Hello"], n=1, temperature=0.0, max_new_tokens=4) == before
