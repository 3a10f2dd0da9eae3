"""VLLMSampler on a real vLLM engine (CPU backend, fp32) and a tiny local Llama: greedy equality
with transformers before and after an in-memory weight sync, chat prompts, truncation and stop
strings, seeded reproducibility, log-probs against a float64 forward, refusal of bad input and of
bad state dicts before anything is loaded, the JSONL round trip, and (slow, torchrun on 2 ranks) the
``rank0`` and ``replicate`` layouts with engines in other processes that sync through a folder.
The session's engine is ``conftest.vllm_sampler``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import hf_greedy_with_logprobs, tiny_model, tiny_tokenizer

from lrdpo_fast.loop.samples import Sample, read_samples, write_samples

vllm = pytest.importorskip("vllm")
from lrdpo_fast.loop.sampler import VLLMSampler, request_seed  # noqa: E402

PROMPTS = [
    "The quick brown fox",
    "What is the capital of France?",
    [{"role": "user", "content": "Write a short poem about the sea."}],
    "Hello",
]
# longer than a KV block (128 tokens on the CPU backend): the prefix cache keeps its first block,
# so a weight sync that forgot to reset the cache would reuse KV computed by the old weights
LONG_PROMPT = [1] + [(7 * i) % 300 + 10 for i in range(149)]


def _prompt_ids(tok, prompt) -> list[int]:
    """How the trainer tokenizes a prompt: chat template + generation prompt, or BOS + text."""
    if isinstance(prompt[0], int):
        return list(prompt)
    if isinstance(prompt, str):
        return [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    return hf_greedy_with_logprobs(model, prompt_ids, max_new_tokens)[0]


def _greedy(sampler, prompts=PROMPTS, max_new_tokens=16):
    return [g[0].response_ids for g in sampler.generate(prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens)]


def _original_weights():
    return tiny_model("llama", seed=0).state_dict()


def test_import_is_light():
    code = (
        "import sys, lrdpo_fast.loop.sampler, lrdpo_fast.loop.samples; "
        "bad = [m for m in ('vllm', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_greedy_equals_transformers_before_and_after_load_weights(vllm_sampler):
    tok = tiny_tokenizer()
    prompts = PROMPTS + [LONG_PROMPT]
    prompt_ids = [_prompt_ids(tok, p) for p in prompts]
    samples = vllm_sampler.generate(prompts, n=2, temperature=0.0, max_new_tokens=16)
    assert [g[0].prompt_ids for g in samples] == prompt_ids  # chat template with generation prompt
    assert tok.decode(prompt_ids[2]).endswith("<|im_start|>assistant\n")
    base = tiny_model("llama", seed=0)
    before = [_hf_greedy(base, ids, 16) for ids in prompt_ids]
    assert [g[0].response_ids for g in samples] == before
    assert all(g[0].response_ids == g[1].response_ids for g in samples)  # greedy: n equal samples

    new = tiny_model("llama", seed=1)
    after = [_hf_greedy(new, ids, 16) for ids in prompt_ids]
    assert after != before
    try:
        seconds = vllm_sampler.load_weights(new)  # a module
        assert 0 < seconds < 10
        assert _greedy(vllm_sampler, prompts) == after
    finally:
        vllm_sampler.load_weights(_original_weights())  # a state dict
    assert _greedy(vllm_sampler, prompts) == before
    assert torch.set_num_threads is torch._C.set_num_threads  # the engine's replacement was undone


def test_prompt_ids_are_the_trainers(vllm_sampler):
    """A sample's prompt_ids are the prompt ids the trainer gives the same prompt in a pair."""
    import lrdpo_fast as lf

    tok = tiny_tokenizer()
    out = vllm_sampler.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=1)
    for prompt, group in zip(PROMPTS, out):
        chosen, rejected = (
            ("yes", "no")
            if isinstance(prompt, str)
            else ([{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}])
        )
        pair = lf.tokenize_record({"prompt": prompt, "chosen": chosen, "rejected": rejected}, tok)
        assert group[0].prompt_ids == pair.prompt_ids


def test_load_weights_from_a_trainer(vllm_sampler, tmp_path):
    from helpers import random_records

    import lrdpo_fast as lf

    tok = tiny_tokenizer()
    cfg = lf.TrainConfig(
        beta=0.1,
        learning_rate=5e-2,
        lr_scheduler="constant",
        pairs_per_step=4,
        max_steps=2,
        output_dir=str(tmp_path / "run"),
        progress=False,
        plot=False,
        save_final=False,
    )
    trainer = lf.Trainer(tiny_model("llama", seed=0).train(), tok, random_records(8, seed=3), cfg)
    trainer.train()
    policy = trainer.model.eval()
    prompt_ids = [_prompt_ids(tok, p) for p in PROMPTS]
    expected = [_hf_greedy(policy, ids, 16) for ids in prompt_ids]
    try:
        vllm_sampler.load_weights(trainer.export_state_dict())
        assert _greedy(vllm_sampler) == expected
    finally:
        vllm_sampler.load_weights(_original_weights())


def test_truncated_and_stop_strings(vllm_sampler):
    (cut,) = vllm_sampler.generate(["The quick brown fox"], n=1, temperature=0.0, max_new_tokens=3)
    assert cut[0].truncated and cut[0].finish_reason == "length" and len(cut[0].response_ids) == 3
    (full,) = vllm_sampler.generate(["The quick brown fox"], n=1, temperature=0.0, max_new_tokens=24)
    text = full[0].text
    k = next(k for k in range(2, len(text) - 2) if "\ufffd" not in text[k : k + 2] and text.index(text[k : k + 2]) == k)
    (stopped,) = vllm_sampler.generate(
        ["The quick brown fox"], n=1, temperature=0.0, max_new_tokens=24, stop=text[k : k + 2]
    )
    s = stopped[0]
    assert s.finish_reason == "stop" and not s.truncated
    assert s.text == text[:k]
    assert s.response_ids == full[0].response_ids[: len(s.response_ids)] and len(s.response_ids) < 24


def test_seeded_samples_are_reproducible(vllm_sampler):
    kw = dict(n=3, temperature=1.0, max_new_tokens=12)
    a = vllm_sampler.generate(PROMPTS[:3], seed=7, **kw)
    b = vllm_sampler.generate(PROMPTS[:3], seed=7, **kw)
    c = vllm_sampler.generate(PROMPTS[:3], seed=8, **kw)
    ids = lambda out: [[s.response_ids for s in g] for g in out]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert all(len({tuple(r) for r in g}) == 3 for g in ids(a))  # n distinct samples per prompt
    # a sample depends on (seed, prompt index, sample index) only: not on n or on the batch
    first_two = vllm_sampler.generate(PROMPTS[:3], seed=7, n=2, temperature=1.0, max_new_tokens=12)
    assert ids(first_two) == [g[:2] for g in ids(a)]
    assert ids(vllm_sampler.generate(PROMPTS[:3], **kw)) == ids(vllm_sampler.generate(PROMPTS[:3], seed=0, **kw))
    assert request_seed(7, 0, 1) != request_seed(7, 1, 0) and request_seed(7, 2, 1) == request_seed(7, 2, 1)
    # a progress bar and one torch thread while sampling change nothing in the samples
    vllm_sampler.cpu_threads = 1
    try:
        assert ids(vllm_sampler.generate(PROMPTS[:3], seed=7, progress=True, **kw)) == ids(a)
    finally:
        vllm_sampler.cpu_threads = None


def test_seeded_batch_larger_than_one_engine_step(vllm_sampler):
    """~10k prompt tokens: more than one engine step prefills (vLLM's CPU runner crashed on seeded
    requests whose prompt was split over steps); the samples do not depend on the batch."""
    prompts = [[1] + [(13 * i + 5 * k) % 300 + 10 for k in range(199)] for i in range(25)]
    big = vllm_sampler.generate(prompts, n=2, temperature=1.0, max_new_tokens=3, seed=4)
    alone = vllm_sampler.generate(prompts[:1], n=2, temperature=1.0, max_new_tokens=3, seed=4)
    assert [s.response_ids for s in big[0]] == [s.response_ids for s in alone[0]]
    assert len(big) == 25 and all(len(g) == 2 and g[0].num_tokens == 3 for g in big)


def test_logprobs_match_a_float64_forward(vllm_sampler):
    out = vllm_sampler.generate(PROMPTS, n=2, temperature=1.0, top_p=0.9, max_new_tokens=12, logprobs=True, seed=3)
    model = tiny_model("llama", seed=0).double()
    for group in out:
        for s in group:
            assert len(s.logprobs) == len(s.response_ids) > 0
            ids = torch.tensor([s.prompt_ids + s.response_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(s.prompt_ids) - 1 : -1]
            ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(s.response_ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float64), ref, atol=2e-4, rtol=1e-4)
    assert vllm_sampler.generate(PROMPTS[:1], n=1, max_new_tokens=4)[0][0].logprobs is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[]), "prompts is empty"),
        (dict(prompts="Hello"), "prompts must be a list"),
        (dict(prompts=[""]), r"prompts\[0\] is an empty string"),
        (dict(prompts=["a", []]), r"prompts\[1\] is empty"),
        (dict(prompts=[{"role": "user", "content": "hi"}]), r"prompts\[0\] is a single chat message"),
        (dict(prompts=["a"], n=0), "n must be"),
        (dict(prompts=["a"], temperature=-0.5), "temperature must be"),
        (dict(prompts=["a"], top_p=0.0), "top_p must be"),
        (dict(prompts=["a"], max_new_tokens=0), "max_new_tokens must be"),
        (dict(prompts=["a"], stop=[""]), "stop must be"),
        (dict(prompts=["a"], seed=-1), "seed must be"),
        (dict(prompts=["a", [5] * 256]), r"prompts\[1\] has 256 tokens; max_model_len=256"),
        (dict(prompts=[[5, 100000]]), r"prompts\[0\] holds token ids outside"),
    ],
)
def test_generate_rejects_bad_input(vllm_sampler, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vllm_sampler.generate(**kwargs)


def test_long_prompt_is_capped_by_max_model_len(vllm_sampler):
    (g,) = vllm_sampler.generate([[5] * 250], n=1, temperature=0.0, max_new_tokens=64)
    assert len(g[0].response_ids) <= 6 and g[0].truncated


def test_bad_state_dicts_are_refused_before_loading(vllm_sampler):
    before = _greedy(vllm_sampler)
    good = tiny_model("llama", seed=1).state_dict()
    partial = dict(good)
    del partial["model.layers.1.mlp.down_proj.weight"]
    misshaped = dict(good)
    misshaped["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    extra = dict(good)
    extra["model.layers.9.mlp.up_proj.weight"] = torch.zeros(128, 64)
    nan = dict(good)
    nan["model.norm.weight"] = torch.full((64,), float("nan"))
    integer = dict(good)
    integer["model.norm.weight"] = torch.ones(64, dtype=torch.int64)
    cases = [
        (partial, r"missing tensor 'model\.layers\.1\.mlp\.down_proj\.weight'"),
        (
            misshaped,
            r"weights\['model\.layers\.0\.self_attn\.k_proj\.weight'\] has shape \(64, 64\); the checkpoint has \(32, 64\)",
        ),
        (extra, r"unexpected tensor 'model\.layers\.9\.mlp\.up_proj\.weight'"),
        (nan, r"weights\['model\.norm\.weight'\] holds NaN"),
        (integer, r"weights\['model\.norm\.weight'\] has dtype torch\.int64"),
        ({"model.norm.weight": "x"}, r"must be a torch\.Tensor"),
        (42, "weights must be a state dict"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            vllm_sampler.load_weights(bad)
    assert _greedy(vllm_sampler) == before  # nothing of the refused dicts was loaded


def test_samples_jsonl_round_trip_is_byte_identical(vllm_sampler, tmp_path):
    out = vllm_sampler.generate(PROMPTS, n=2, temperature=1.0, max_new_tokens=10, logprobs=True, seed=11)
    out[1][0] = Sample(**{**out[1][0].to_record(), "logprobs": None})
    path = write_samples(tmp_path / "samples.jsonl", out)
    back = read_samples(path)
    assert back == out
    write_samples(tmp_path / "again.jsonl", back)
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    first = json.loads(path.read_text().splitlines()[0])
    assert list(first) == [
        "prompt_index",
        "sample_index",
        "prompt_ids",
        "response_ids",
        "text",
        "finish_reason",
        "truncated",
        "logprobs",
    ]


def test_sample_validation():
    ok = dict(
        prompt_ids=[1, 5], response_ids=[7, 2], text="x", finish_reason="stop", truncated=False, logprobs=[-1.0, -0.5]
    )
    Sample(**ok)
    for change, match in [
        (dict(finish_reason="abort"), "finish_reason must be"),
        (dict(truncated=True), "disagrees with finish_reason"),
        (dict(logprobs=[-1.0]), "logprobs has 1 values for 2"),
        (dict(logprobs=[-1.0, float("nan")]), r"logprobs\[1\] must be a finite float"),
        (dict(response_ids=[7, -2]), "response_ids holds a negative"),
        (dict(text=None), "text must be a str"),
    ]:
        with pytest.raises(ValueError, match=match):
            Sample(**{**ok, **change})
    with pytest.raises(ValueError, match="record is missing"):
        Sample.from_record({"prompt_ids": [1]})


def test_sleep_is_a_no_op_without_sleep_mode(vllm_sampler, tiny_model_dir):
    assert not vllm_sampler.sleep_mode
    vllm_sampler.sleep()
    vllm_sampler.wake_up()
    assert vllm_sampler.generate(["Hello"], n=1, max_new_tokens=2)[0][0].num_tokens == 2
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="enable_sleep_mode=True needs a CUDA device"):
            VLLMSampler(str(tiny_model_dir), enable_sleep_mode=True)


def test_constructor_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="model must be a local save_pretrained folder"):
        VLLMSampler(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="tokenizer is required when model is a module"):
        VLLMSampler(tiny_model("llama"))
    with pytest.raises(ValueError, match="tensor_parallel_size must be"):
        VLLMSampler(str(tmp_path), tensor_parallel_size=0)
    with pytest.raises(ValueError, match="gpu_memory_utilization must be"):
        VLLMSampler(str(tmp_path), gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="cpu_threads must be an int >= 1"):
        VLLMSampler(str(tmp_path), cpu_threads=0)


TORCHRUN_SCRIPT = """\
import gc, json, os, sys
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from helpers import hf_greedy_with_logprobs, tiny_model, tiny_tokenizer
from lrdpo_fast.loop.sampler import VLLMSampler

def main():
    model_dir, out_path = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    prompts = json.loads(sys.argv[3])
    policy = tiny_model("llama", seed=1)  # FSDP2-sharded: load_weights gathers its DTensors
    for layer in policy.model.layers:
        fully_shard(layer)
    fully_shard(policy)
    old = tiny_model("llama", seed=0).state_dict()
    result = {}
    for layout in ("rank0", "replicate"):
        os.environ["LRDPO_SAMPLER_SHARDING"] = layout
        # rank0 starts from the folder; replicate from a module + tokenizer object (saved per rank)
        model, tok = (model_dir, None) if layout == "rank0" else (tiny_model("llama", seed=0), tiny_tokenizer())
        with VLLMSampler(model, tok, dtype="float32", max_model_len=128, enforce_eager=True) as s:
            r = {"hosts_engine": s.hosts_engine, "in_process": getattr(s, "in_process", None)}
            r["gc"] = [gc.isenabled(), gc.get_freeze_count()]  # no engine here: the heap given back
            r["sampled"] = [[x.to_record() for x in g] for g in
                            s.generate(prompts, n=2, temperature=1.0, max_new_tokens=8, seed=5, logprobs=True)]
            s.load_weights(policy)
            r["greedy_new"] = [g[0].response_ids for g in s.generate(prompts, n=1, temperature=0.0, max_new_tokens=8)]
            if layout == "replicate":  # every engine needs the weights: {} on rank 1 fails on every rank
                try:
                    s.load_weights(old if rank == 0 else {})
                except ValueError as e:
                    r["refused"] = str(e)
            s.load_weights(old if rank == 0 or layout == "replicate" else {})  # Trainer.export_state_dict
            r["greedy_old"] = [g[0].response_ids for g in s.generate(prompts, n=1, temperature=0.0, max_new_tokens=8)]
            r["fallback_logged"] = s._fallback_logged
        result[layout] = r
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_torchrun_layouts_gather_samples_in_prompt_order(vllm_sampler, tiny_model_dir, tmp_path):
    """2 ranks (gloo) on the CPU, each layout: ``rank0`` (rank 0 hosts an engine in its own
    process, the CPU default) and ``replicate`` (an engine per rank, prompts i % 2 == rank). Both
    give every rank the samples of one process, in prompt order (seeds follow the global prompt
    index); the engines in other processes sync weights through a folder (logged once per
    sampler); an FSDP2 module is gathered; a partial dict on one rank is refused on all."""
    import os

    prompts = ["The quick brown fox", "Hello", [{"role": "user", "content": "Hi there"}], "What is", "Maybe"]
    (tmp_path / "run.py").write_text(TORCHRUN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([tests_dir, os.path.dirname(tests_dir)]))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(tmp_path / "run.py"),
        str(tiny_model_dir),
        str(tmp_path / "out.json"),
        json.dumps(prompts),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = json.loads((tmp_path / "out.json").read_text())

    single = vllm_sampler.generate(prompts, n=2, temperature=1.0, max_new_tokens=8, seed=5, logprobs=True)
    tok = tiny_tokenizer()
    new, old = tiny_model("llama", seed=1), tiny_model("llama", seed=0)
    want_new = [_hf_greedy(new, _prompt_ids(tok, p), 8) for p in prompts]
    want_old = [_hf_greedy(old, _prompt_ids(tok, p), 8) for p in prompts]
    assert [r["rank0"]["hosts_engine"] for r in ranks] == [True, False]
    assert [r["replicate"]["hosts_engine"] for r in ranks] == [True, True]
    for layout in ("rank0", "replicate"):
        for rank, r in enumerate(ranks):
            got = r[layout]
            assert got["in_process"] in (False, None)
            assert got["gc"] == [True, 0]
            assert got["fallback_logged"] == got["hosts_engine"]
            ids = [[s["response_ids"] for s in g] for g in got["sampled"]]
            assert ids == [[s.response_ids for s in g] for g in single], (layout, rank)
            for g, h in zip(got["sampled"], single):
                for s, t in zip(g, h):
                    assert s["prompt_ids"] == t.prompt_ids
                    assert s["logprobs"] == pytest.approx(t.logprobs, abs=1e-4)
            assert got["greedy_new"] == want_new, (layout, rank)
            assert got["greedy_old"] == want_old, (layout, rank)
    assert all("missing tensor" in r["replicate"]["refused"] for r in ranks)
    assert proc.stderr.count("the engine runs in another process") == 3  # once per engine


def test_thread_block_sets_and_restores_torch_threads():
    """cpu_threads / load_weights run a block on n torch threads (CPU) and put the count back,
    also when the block raises; None leaves the count alone."""
    from lrdpo_fast.loop.sampler import _Threads

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    with _Threads(want):
        assert torch.get_num_threads() == want
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), _Threads(want):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with _Threads(None):
        assert torch.get_num_threads() == before
