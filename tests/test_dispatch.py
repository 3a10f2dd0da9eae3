"""backend="auto": the measured choice per shape bucket (lrdpo_fast.ops.dispatch), with a stubbed
timer instead of CUDA events. The trials themselves run for real (tiny shapes; the Triton one
through the interpreter on a CPU machine)."""

import inspect
import json
import logging

import pytest
import torch
from cases import CUDA, make_case

import lrdpo_fast as lf
from lrdpo_fast.ops import dispatch


class StubTimer:
    """timer(backend, run): runs the trial once (so it must work) and returns a set time."""

    def __init__(self, **seconds):
        self.seconds = seconds
        self.calls = []

    def __call__(self, backend, run):
        self.calls.append(backend)
        run()
        return self.seconds[backend]


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("LRDPO_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.clear()
    yield
    dispatch.clear()
    dispatch.set_timer(None)


def _trial_case():
    hidden, weight, labels, _, _ = make_case(9, 16, 40)
    ran = []

    def trial(backend):
        ran.append(backend)
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        lf.linear_logprobs(h, w, labels, backend=backend).sum().backward()
        assert h.grad is not None and w.grad is not None

    return hidden, weight, trial, ran


@pytest.mark.parametrize("fast", ["torch", "triton"])
def test_picks_the_faster_and_reports_it(fast, caplog):
    _, _, trial, ran = _trial_case()
    slow = "triton" if fast == "torch" else "torch"
    timer = StubTimer(**{fast: 0.001, slow: 0.005})
    key = dispatch.bucket_key("logprobs", 9, 16, 40, torch.float32, "Fake GPU")
    with caplog.at_level(logging.INFO, logger="lrdpo_fast.dispatch"):
        assert dispatch.measure(key, trial, timer=timer) == fast
    assert sorted(timer.calls) == ["torch", "triton"] and sorted(ran) == ["torch", "triton"]
    assert dispatch.backend_report()[key] == {"backend": fast, "source": "measured", "times_ms": {fast: 1.0, slow: 5.0}}
    assert sum(fast in r.message and "measured" in r.message for r in caplog.records) == 1


def test_caches_per_bucket_in_memory_and_on_disk():
    _, _, trial, _ = _trial_case()
    timer = StubTimer(torch=0.002, triton=0.001)
    k1 = dispatch.bucket_key("fused", 3000, 16, 40, torch.bfloat16, "Fake GPU")
    k2 = dispatch.bucket_key("fused", 5000, 16, 40, torch.bfloat16, "Fake GPU")
    assert k1 == dispatch.bucket_key("fused", 4096, 16, 40, torch.bfloat16, "Fake GPU")  # N -> 4096
    assert k1 != k2 and "N=8192" in k2
    assert dispatch.measure(k1, trial, timer=timer) == "triton"
    assert dispatch.measure(k1, trial, timer=timer) == "triton"
    assert len(timer.calls) == 2  # the second call of the bucket measured nothing
    assert dispatch.backend_report()[k1]["source"] == "memory"
    timer2 = StubTimer(torch=0.001, triton=0.002)
    assert dispatch.measure(k2, trial, timer=timer2) == "torch"  # another bucket is measured anew
    assert len(timer2.calls) == 2
    saved = json.loads(dispatch.cache_path().read_text())["choices"]
    assert saved[k1]["backend"] == "triton" and saved[k2]["backend"] == "torch"
    dispatch.clear()  # a new process: the disk answers, nothing is timed
    timer3 = StubTimer(torch=0.0, triton=1.0)
    assert dispatch.measure(k1, trial, timer=timer3) == "triton"
    assert timer3.calls == [] and dispatch.backend_report()[k1]["source"] == "disk"


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "choices": 7}', "\x00\xff", "[]"])
def test_survives_a_corrupted_cache_file(content):
    _, _, trial, _ = _trial_case()
    path = dispatch.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    key = dispatch.bucket_key("logprobs", 9, 16, 40, torch.float32, "Fake GPU")
    timer = StubTimer(torch=0.002, triton=0.001)
    assert dispatch.measure(key, trial, timer=timer) == "triton"
    assert len(timer.calls) == 2
    assert json.loads(path.read_text())["choices"][key]["backend"] == "triton"  # rewritten whole


def test_stale_versions_in_cache_are_ignored():
    _, _, trial, _ = _trial_case()
    key = dispatch.bucket_key("logprobs", 9, 16, 40, torch.float32, "Fake GPU")
    dispatch.cache_path().parent.mkdir(parents=True, exist_ok=True)
    dispatch.cache_path().write_text(
        json.dumps(
            {"version": dispatch.CACHE_VERSION, "versions": {"torch": "0"}, "choices": {key: {"backend": "torch"}}}
        )
    )
    assert dispatch.measure(key, trial, timer=StubTimer(torch=0.002, triton=0.001)) == "triton"


def test_a_failing_backend_loses():
    _, _, trial, _ = _trial_case()

    def broken(backend):
        if backend == "triton":
            raise RuntimeError("out of memory")
        trial(backend)

    key = dispatch.bucket_key("logprobs", 9, 16, 40, torch.float32, "Fake GPU")
    assert dispatch.measure(key, broken, timer=StubTimer(torch=0.5, triton=0.001)) == "torch"


@pytest.mark.skipif(CUDA, reason="checks the CPU machine's behaviour")
def test_never_measures_on_cpu():
    timer = StubTimer(torch=1.0, triton=0.0)
    dispatch.set_timer(timer)
    hidden, weight, labels, cu, _ = make_case(12, 16, 40, n_seqs=4)
    h = hidden.clone().requires_grad_()
    lf.sequence_logprobs(h, weight, labels, cu)[0].sum().backward()
    loss, _ = lf.fused_lrdpo_loss(h, weight, labels, cu, ref_logps=torch.zeros(4))
    loss.backward()
    assert timer.calls == []
    report = dispatch.backend_report()
    assert report and all(r == {"backend": "torch", "source": "not-cuda", "times_ms": None} for r in report.values())
    assert {k.split("|")[0] for k in report} == {"logprobs", "fused"}
    assert not dispatch.cache_path().exists()


@pytest.mark.parametrize("how", ["argument", "env"])
def test_honours_the_forced_choice(how, monkeypatch):
    timer = StubTimer(torch=0.0, triton=1.0)  # measuring would pick torch
    dispatch.set_timer(timer)
    hidden, weight, labels, cu, _ = make_case(12, 16, 40, n_seqs=4)
    if CUDA:
        hidden, weight, labels, cu = (t.cuda() for t in (hidden, weight, labels, cu))
    seen = []
    from lrdpo_fast.ops import logprobs

    real = logprobs._backward_impl
    monkeypatch.setattr(logprobs, "_backward_impl", lambda b: seen.append(b) or real(b))
    kw = {"backend": "triton"}
    if how == "env":
        monkeypatch.setenv(dispatch.ENV_VAR, "triton")
        kw = {}
    h = hidden.clone().requires_grad_()
    lf.linear_logprobs(h, weight, labels, **kw).sum().backward()
    assert seen == ["triton", "triton"] and timer.calls == []
    if how == "env" or CUDA:
        (rep,) = dispatch.backend_report().values()
        assert rep["backend"] == "triton" and rep["source"] == ("env" if how == "env" else "forced")


def test_env_var_value_is_checked(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cublas")
    hidden, weight, labels, _, _ = make_case(4, 8, 10)
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        lf.linear_logprobs(hidden, weight, labels)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_measures_once_on_cuda():
    timer = StubTimer(torch=0.003, triton=0.001)
    dispatch.set_timer(timer)
    hidden, weight, labels, cu, _ = make_case(12, 16, 40, n_seqs=4, device="cuda")
    loss, _ = lf.fused_lrdpo_loss(hidden.requires_grad_(), weight, labels, cu, ref_logps=torch.zeros(4, device="cuda"))
    loss.backward()
    lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=torch.zeros(4, device="cuda"))[0].backward()
    assert timer.calls == ["triton", "torch"]
    (key,) = [k for k in dispatch.backend_report() if k.startswith("fused|")]
    assert dispatch.backend_report()[key]["backend"] == "triton"


def test_autotune_options_follow_the_installed_triton(monkeypatch):
    """The kernels pass do_bench/cache_results to triton.autotune only where that Triton takes them
    (the device image's older Triton must import the kernels, not fail on a keyword)."""
    import triton
    from lrdpo_fast.kernels import autotune

    params = inspect.signature(triton.autotune).parameters
    got = autotune.tuning_options()
    assert set(got) == {k for k in ("do_bench", "cache_results") if k in params}

    def old_autotune(configs, key, prune_configs_by=None, reset_to_zero=None, warmup=25, rep=100):
        raise AssertionError("only its signature is read")

    monkeypatch.setattr(triton, "autotune", old_autotune)
    assert autotune.tuning_options() == {}
