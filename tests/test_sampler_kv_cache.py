"""The CPU engine's KV cache is sized to the model and the engine's budget (loop/sampler/kv_cache.py),
not a fixed GiB: the cache is zeroed at start and resident for the engine's life."""

from __future__ import annotations

import json

import pytest

from lrdpo_fast.loop.sampler.kv_cache import (
    MAX_BYTES,
    MIN_BYTES,
    cpu_kv_cache_bytes,
    kv_bytes_per_token,
)

GQA = {"num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 256}


def _folder(tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_bytes_per_token_follow_layers_kv_heads_and_head_dim():
    assert kv_bytes_per_token(GQA) == 3 * 2 * 2 * 32 * 4  # head_dim = hidden / heads
    assert kv_bytes_per_token({**GQA, "head_dim": 64}) == 3 * 2 * 2 * 64 * 4
    assert kv_bytes_per_token({"text_config": {**GQA, "head_dim": 64}}) == 3 * 2 * 2 * 64 * 4
    no_kv = {k: v for k, v in GQA.items() if k != "num_key_value_heads"}
    assert kv_bytes_per_token(no_kv) == 3 * 2 * 8 * 32 * 4  # multi-head: every head has K and V
    assert kv_bytes_per_token({"hidden_size": 256}) is None


def test_sized_for_max_num_seqs_full_sequences_in_whole_blocks(tmp_path):
    big = {**GQA, "num_hidden_layers": 64, "head_dim": 128}
    folder = _folder(tmp_path, big)
    per_token = 64 * 2 * 2 * 128 * 4
    assert cpu_kv_cache_bytes(folder, 200, 8) == 256 * 8 * per_token  # 200 tokens -> one 256-token block
    assert cpu_kv_cache_bytes(folder, 300, 8) == 512 * 8 * per_token
    assert cpu_kv_cache_bytes(folder, 4096, None) == MAX_BYTES  # 256 sequences of 4096: capped
    assert cpu_kv_cache_bytes(_folder(tmp_path, GQA), 64, 1) == MIN_BYTES  # floor


def test_unknown_configs_keep_the_old_fixed_size(tmp_path):
    assert cpu_kv_cache_bytes(str(tmp_path), 256, None) == MAX_BYTES  # no config.json
    assert cpu_kv_cache_bytes(_folder(tmp_path, {"model_type": "x"}), 256, None) == MAX_BYTES
    no_length = _folder(tmp_path, GQA)
    assert cpu_kv_cache_bytes(no_length, None, None) == MAX_BYTES  # no max_model_len, no max_position_embeddings


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_bad_max_num_seqs_is_named(tmp_path, bad):
    with pytest.raises(ValueError, match="max_num_seqs"):
        cpu_kv_cache_bytes(_folder(tmp_path, GQA), 256, bad)


def test_the_engine_gets_the_sized_cache_and_samples(tiny_model_dir, monkeypatch):
    """A real engine started without VLLM_CPU_KVCACHE_SPACE holds the sized cache (not 1 GiB) and
    samples; a user's VLLM_CPU_KVCACHE_SPACE would still win (vLLM reads it over the argument)."""
    pytest.importorskip("vllm")
    from lrdpo_fast.loop.sampler import VLLMSampler

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    expected = cpu_kv_cache_bytes(str(tiny_model_dir), 128, 16)
    assert expected < MAX_BYTES
    sampler = VLLMSampler(
        str(tiny_model_dir), seed=0, dtype="float32", max_model_len=128, enforce_eager=True, max_num_seqs=16
    )
    try:
        cache = sampler.llm.llm_engine.vllm_config.cache_config
        assert cache.kv_cache_memory_bytes == expected
        samples = sampler.generate(["the cat"], n=4, max_new_tokens=8)
        assert len(samples[0]) == 4
    finally:
        sampler.close()
