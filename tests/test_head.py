"""model/head.py: what each architecture does to its logits reaches the fused kernels, and an
unknown logit transform is refused (the fused path would otherwise be silently wrong)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from transformers import AutoConfig, LlamaConfig

from lrdpo_fast.data import tokenize_pairs
from lrdpo_fast.data.packing import pack_pairs
from lrdpo_fast.model.head import lm_head, logit_transform
from lrdpo_fast.model.packed import model_sequence_logprobs


@pytest.mark.parametrize(
    "model_type, kw, want",
    [
        ("llama", {}, (1.0, None)),
        ("granite", {"logits_scaling": 8.0}, (8.0, None)),  # logits / 8
        ("granite", {}, (1.0, None)),  # the neutral default
        ("hyperclovax", {"logits_scaling": 2.0}, (0.5, None)),  # logits * 2
        ("cohere", {"logit_scale": 0.0625}, (16.0, None)),  # logits * 1/16
        ("gemma2", {"final_logit_softcapping": 30.0}, (1.0, 30.0)),
        ("gemma3_text", {"final_logit_softcapping": None}, (1.0, None)),
    ],
)
def test_logit_transform_of_each_family(model_type, kw, want):
    assert logit_transform(AutoConfig.for_model(model_type, **kw)) == want


def test_minicpm3_divides_by_its_derived_scaling():
    cfg = AutoConfig.for_model("minicpm3")  # logits_scaling is a property (hidden / dim_model_base)
    assert cfg.logits_scaling != 1.0 and logit_transform(cfg) == (cfg.logits_scaling, None)


def test_unknown_transforms_and_bad_values_are_refused():
    odd = LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    odd.logits_scaling = 4.0  # a fine-tune's config with a field its architecture does not use
    with pytest.raises(ValueError, match=r"config.logits_scaling = 4.0 on model type 'llama'"):
        logit_transform(odd)
    odd.logits_scaling = 1.0  # neutral: nothing to apply
    assert logit_transform(odd) == (1.0, None)
    for bad in (0.0, -2.0, float("inf")):
        with pytest.raises(ValueError, match="config.logits_scaling of 'granite'"):
            logit_transform(AutoConfig.for_model("granite", logits_scaling=bad))
        with pytest.raises(ValueError, match="final_logit_softcapping"):
            logit_transform(AutoConfig.for_model("gemma2", final_logit_softcapping=bad))


@pytest.mark.parametrize("kind", ["gemma2", "granite"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_temperature_divides_the_final_logits(kind, temperature):
    """model_sequence_logprobs(temperature=T) = log_softmax(model(ids).logits / T): T applies after
    the model's own scale and soft cap (head.kernel_args folds both into the kernels' arguments)."""
    model = tiny_model(kind).double()
    examples = tokenize_pairs(
        [{"prompt": "the quick fox", "chosen": "jumps over", "rejected": "sleeps"}], tiny_tokenizer()
    )
    batch = pack_pairs(examples)
    got, _ = model_sequence_logprobs(model, batch, backend="torch", temperature=temperature)
    want = []
    ex = examples[0]
    for resp in (ex.chosen_ids, ex.rejected_ids):
        ids = torch.tensor([ex.prompt_ids + resp])
        with torch.no_grad():
            logp = (model(ids).logits[0] / temperature).log_softmax(-1)
        p = len(ex.prompt_ids)
        want.append(logp[p - 1 : -1].gather(1, ids[0, p:, None]).sum())
    torch.testing.assert_close(got.double(), torch.stack(want), rtol=1e-5, atol=1e-5)
    head = lm_head(model)
    assert (head.temperature, head.softcap) == ((1.0, 3.0) if kind == "gemma2" else (4.0, None))
