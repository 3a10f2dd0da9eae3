"""The embedded example: a tiny Llama, a locally trained tokenizer and 64 preference pairs.

Everything is built on the spot from files shipped in ``lrdpo_fast/examples/`` (no model hub, no
network): the tokenizer is a byte-level BPE trained on ``tokenizer_corpus.txt``, the model a
randomly initialised ~2M-parameter Llama with a fixed seed, the data ``pairs.jsonl`` (chosen
answers are correct and concise; rejected ones are wrong, padded with filler, or both, so the
length term ``alpha > 0`` has something to do). ``config.yaml`` is the default training config.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
PAIRS_PATH = EXAMPLES_DIR / "pairs.jsonl"
CONFIG_PATH = EXAMPLES_DIR / "config.yaml"
CORPUS_PATH = EXAMPLES_DIR / "tokenizer_corpus.txt"

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def example_tokenizer(vocab_size: int = 512):
    """A ``PreTrainedTokenizerFast`` trained on the shipped corpus (byte-level BPE).

    pad "<pad>" = 0, bos "<s>" = 1, eos "</s>" = 2, unk "<unk>" = 3, a one-line chat template
    (``<|user|>...</s><|assistant|>...</s>``). Deterministic for a given ``vocab_size``.
    """
    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(f"vocab_size must be an int >= 300 (256 bytes + specials), got {vocab_size!r}")
    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    from ..model.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(lines, vocab_size, special_tokens=SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE)


def example_model(vocab_size: int = 512, *, seed: int = 0, hidden_size: int = 192, num_layers: int = 4):
    """A randomly initialised ``LlamaForCausalLM`` (fp32, train mode).

    hidden ``hidden_size`` (default 192), heads of dim 32 (2 KV heads when the head count is
    even), ``num_layers`` layers (default 4), MLP 512, untied LM head: about 2.2M parameters at the
    defaults. Same ``seed`` -> bit-identical weights.
    """
    from ..model.tiny import tiny_causal_lm

    if hidden_size % 32:
        raise ValueError(f"hidden_size must be a multiple of 32 (head_dim 32), got {hidden_size}")
    heads = hidden_size // 32
    return tiny_causal_lm(
        "llama",
        seed=seed,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=512,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=2 if heads % 2 == 0 else 1,
    )


def example_records(chat: bool = True) -> list[dict]:
    """The 64 shipped pairs as records; ``chat`` wraps the prompt as one user message."""
    from ..data.files import read_jsonl

    records = read_jsonl(PAIRS_PATH)
    if chat:
        records = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in records]
    return records


def example_config(**overrides):
    """The shipped ``config.yaml`` as a ``TrainConfig`` (overrides with value None are ignored)."""
    from ..train.config import TrainConfig

    return TrainConfig.from_yaml(CONFIG_PATH, **overrides)
