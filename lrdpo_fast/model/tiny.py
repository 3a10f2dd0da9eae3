"""The one tiny model + tokenizer factory, shared by the embedded example, the tests and the
benchmarks (no model hub, no network, CPU-sized, deterministic).

- ``train_bpe_tokenizer(lines, vocab_size, ...)``: a byte-level BPE trained on the spot;
- ``word_tokenizer(vocab_size)``: a word-level tokenizer over ``w0 w1 ...`` (benchmarks);
- ``tiny_config(kind, **overrides)``: a decoder config (``llama``, ``qwen2``, ``qwen3``,
  ``mistral``, ``phi3``, ``olmo2``, and the head-transform families ``gemma2``, ``gemma3``,
  ``granite``, ``cohere``);
- ``FAMILIES``: the model families users train, each a kind plus the overrides that switch on its
  distinctive features (``tiny_config(*family_config(name))``), tested end to end in
  ``tests/test_families.py``;
- ``tiny_causal_lm(kind, *, seed, dtype, **overrides)``: random weights from that config, the same
  ``seed`` giving bit-identical weights, the global RNG left as it was.
"""

from __future__ import annotations

# kind -> transformers config class
_CONFIG_CLASSES = {
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "mistral": "MistralConfig",
    "phi3": "Phi3Config",
    "olmo2": "Olmo2Config",
    "gemma2": "Gemma2Config",
    "gemma3": "Gemma3TextConfig",
    "granite": "GraniteConfig",
    "cohere": "CohereConfig",
}
KINDS = tuple(_CONFIG_CLASSES)
# configs without a head_dim field: head_dim = hidden_size / num_attention_heads
_NO_HEAD_DIM = ("phi3", "olmo2", "granite", "cohere")
# architectures whose logits are more than h W^T (model.head): small values so the transform matters
_FAMILY_DEFAULTS = {
    "gemma2": dict(final_logit_softcapping=3.0, attn_logit_softcapping=2.0, sliding_window=6, query_pre_attn_scalar=32),
    "gemma3": dict(final_logit_softcapping=3.0, sliding_window=6, query_pre_attn_scalar=32),
    "granite": dict(logits_scaling=4.0, attention_multiplier=0.2),
    "cohere": dict(logit_scale=0.25),
}
_LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,  # short, so the rescaled wavelengths matter at tiny lengths
)
# family -> (kind, overrides): each family's distinctive features switched on, at tiny sizes
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama3": ("llama", dict(rope_parameters=_LLAMA3_ROPE, num_attention_heads=4, num_key_value_heads=2)),
    "llama3.2": ("llama", dict(rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=True, head_dim=64)),
    "smollm2": (
        "llama",
        dict(
            rope_parameters=dict(rope_type="default", rope_theta=100000.0),
            tie_word_embeddings=True,
            hidden_size=96,
            num_attention_heads=3,
        ),
    ),
    "qwen2.5": (
        "qwen2",
        dict(tie_word_embeddings=True, hidden_size=128, head_dim=64, num_attention_heads=2, num_key_value_heads=1),
    ),
    "qwen3": ("qwen3", dict(tie_word_embeddings=True, num_attention_heads=4, num_key_value_heads=2)),
    "mistral": ("mistral", dict(sliding_window=6)),
    "gemma2": ("gemma2", dict(tie_word_embeddings=True, query_pre_attn_scalar=64)),
    "gemma3": (
        "gemma3",
        dict(tie_word_embeddings=True, query_pre_attn_scalar=64, layer_types=["sliding_attention", "full_attention"]),
    ),
    "phi3": ("phi3", {}),
    "granite": ("granite", dict(embedding_multiplier=3.0, residual_multiplier=0.5)),
}
WORD_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def train_bpe_tokenizer(lines, vocab_size: int, *, special_tokens, chat_template: str):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE) trained on ``lines`` (list of str).

    ``special_tokens`` come first in the vocabulary and must start with pad, bos, eos, unk
    (ids 0, 1, 2, 3); ``chat_template`` is a Jinja template. Deterministic for the same inputs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size must be an int >= {256 + len(special_tokens)} (bytes + specials), got {vocab_size!r}"
        )
    tok = Tokenizer(models.BPE(unk_token=special_tokens[3]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(lines), trainer)
    pad, bos, eos, unk = special_tokens[:4]
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk)
    hf.chat_template = chat_template
    return hf


def word_tokenizer(vocab_size: int, *, model_max_length: int = 4096):
    """A ``PreTrainedTokenizerFast`` over a WordLevel vocabulary: ids 0-3 are <pad>, <s>, </s>,
    <unk>, then the words ``w0``, ``w1``, ... (whitespace-split). For synthetic benchmark text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size <= len(WORD_SPECIALS):
        raise ValueError(f"vocab_size must be an int > {len(WORD_SPECIALS)}, got {vocab_size!r}")
    vocab = {tok: i for i, tok in enumerate(WORD_SPECIALS)}
    for i in range(vocab_size - len(WORD_SPECIALS)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def tiny_config(kind: str = "llama", **overrides):
    """A transformers decoder config. Defaults: vocab 320, hidden 64, 2 heads of dim 32, 1 KV head
    (GQA), 2 layers, MLP 128, 512 positions, untied head, pad/bos/eos = 0/1/2, sdpa attention
    (eager for the soft-capped Gemmas, which SDPA cannot express); the gemma2 / gemma3 / granite
    / cohere kinds also set a logit soft cap or scale (``_FAMILY_DEFAULTS``). ``overrides``
    replace any config field (e.g. ``hidden_size=192, num_hidden_layers=4``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    common = dict(
        vocab_size=320,
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_hidden_layers=2,
        intermediate_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attention_dropout=0.0,
    )
    if kind in _NO_HEAD_DIM:
        del common["head_dim"]
    common.update(_FAMILY_DEFAULTS.get(kind, {}))
    common.update(overrides)
    import transformers

    if kind == "mistral":
        common.setdefault("sliding_window", 4096)
    cfg = getattr(transformers, _CONFIG_CLASSES[kind])(**common)
    cfg._attn_implementation = "eager" if kind in ("gemma2", "gemma3") else "sdpa"
    return cfg


def family_config(family: str) -> tuple[str, dict]:
    """(kind, overrides) of a ``FAMILIES`` entry (a copy): ``tiny_config(kind, **overrides)``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    kind, overrides = FAMILIES[family]
    return kind, dict(overrides)


def tiny_causal_lm(kind: str = "llama", *, seed: int = 0, dtype=None, **overrides):
    """A random-weight ``*ForCausalLM`` from ``tiny_config(kind, **overrides)`` (train mode, fp32
    unless ``dtype``). Same ``seed`` -> bit-identical weights; the global torch RNG is restored."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(kind, **overrides)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.random.set_rng_state(state)
    return model if dtype is None else model.to(dtype)
