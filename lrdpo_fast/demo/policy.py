"""The demo's policy: a character-level tokenizer and a ~0.44M-parameter Llama, and the shipped start.

The tokenizer is a ``PreTrainedTokenizerFast`` with one token per character (a BPE model with no
merges, so tokenizing a prompt and a response apart gives the same ids as tokenizing them
together, which is what makes sampled responses and the trainer's re-tokenized pairs agree
token for token). Its post-processor prepends ``<s>`` when special tokens are added (what vLLM does
with a text prompt), and ``lrdpo_fast``'s pair tokenizer prepends the same BOS to text prompts.
Decoding concatenates the characters and drops the special tokens. It loads and detokenizes in
vLLM as well as in transformers.

The model is a ``LlamaForCausalLM``: 2 layers, hidden 128, 4 heads of dim 32 (vLLM's CPU backend
wants head_dim 32 or 64), MLP 384, untied LM head, vocabulary = the tokenizer's 70 tokens.

``start_policy_path()`` is the shipped SFT start policy (``start_policy/``, fp32 safetensors),
made by ``scripts/train_demo_policy.py`` (= ``python -m lrdpo_fast.demo.sft``).
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3
CHARACTERS = string.digits + "=" + " .," + string.ascii_lowercase + string.ascii_uppercase
VOCAB = SPECIAL_TOKENS + list(CHARACTERS)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MAX_POSITIONS = 128  # prompt (6 tokens with BOS) + the longest style (74 + EOS) fits with room to spare
START_POLICY_DIR = Path(__file__).resolve().parent / "start_policy"

MODEL_KWARGS = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=32,
    max_position_embeddings=MAX_POSITIONS,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    attention_dropout=0.0,
)


def make_tokenizer():
    """The character-level ``PreTrainedTokenizerFast`` (pad 0, bos 1, eos 2, unk 3, then characters).

    ``tok("4817=")["input_ids"]`` is ``[1, ids of '4','8','1','7','=']``; with
    ``add_special_tokens=False`` no BOS. ``tok.decode(ids, skip_special_tokens=True)`` gives the text
    back. Characters outside ``CHARACTERS`` become ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(VOCAB)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    return hf


def make_config():
    """The ``LlamaConfig`` of the demo policy (about 0.44M parameters)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=len(VOCAB), pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, **MODEL_KWARGS
    )
    return cfg


def make_model(seed: int = 0):
    """A randomly initialised fp32 ``LlamaForCausalLM`` with ``make_config()``; same seed, same weights."""
    import torch
    from transformers import LlamaForCausalLM

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(make_config())
    finally:
        torch.random.set_rng_state(state)
    return model.float()


def start_policy_path() -> Path:
    """The shipped SFT start policy: a ``save_pretrained`` folder (model, tokenizer, generation config)."""
    if not (START_POLICY_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the demo start policy is missing from {START_POLICY_DIR}; rebuild it with "
            "`python scripts/train_demo_policy.py` (or `python -m lrdpo_fast.demo.sft`)"
        )
    return START_POLICY_DIR


def load_start_policy():
    """(model fp32 in eval mode, tokenizer) of the shipped start policy, through transformers."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = start_policy_path()
    model = LlamaForCausalLM.from_pretrained(path, dtype="float32")
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)
