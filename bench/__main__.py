"""`python -m bench [--profile cpu|gpu|smoke] [--only kernel,scaling,train,sampler,implicit_reward,loop,lora] [--out DIR]`

Runs the comparisons of the chosen profile (default: gpu when CUDA is available, else cpu), each
contender in its own worker process on the same seeded inputs; prints markdown tables with ratios
to lrdpo-fast and PASS/FAIL goal lines; writes results.json, results.md and scaling PNGs under
bench/results/<device>/ (sections not re-run are kept from the previous results.json there).
Sections: kernel, scaling, train (bench/kernel.py, scaling.py, train.py), sampler
(bench/bench_sampler.py), implicit_reward (bench/bench_implicit_reward.py) and loop
(bench/bench_loop.py: a 3-iteration lf.iterate run vs the scripted pipeline, several minutes, so
only with --only ...,loop), loop-shapes (bench/bench_loop_shapes.py: one iteration at Qwen2.5-0.5B's
width and vocabulary, and the iteration's time at 64/128/256 prompts, long, only with
--only ...,loop-shapes) and eval (bench/bench_eval.py: the evaluation's share of an iteration
at the demo's settings, a full demo run, only with --only ...,eval) and lora (bench/bench_lora.py:
peak memory and step time of LoRA against full fine-tuning on a 106M Llama, about 3 minutes,
only with --only ...,lora). A section the profile has no settings for is skipped; the standalone
scripts also write their own files (sampler.*, implicit_reward.*, loop.*, lora.*) to the same folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import report
from .env import REPO, default_device, device_slug, metadata_record
from .profiles import get_profile

SECTIONS = ("kernel", "scaling", "train", "sampler", "implicit_reward", "loop", "loop-shapes", "eval", "lora")
DEFAULT_SECTIONS = ("kernel", "scaling", "train", "sampler", "implicit_reward")  # loop*, eval, lora: opt-in (long)
STANDALONE = {  # section -> (module, the JSON file its main writes to --out)
    "sampler": ("bench.bench_sampler", "sampler.json"),
    "implicit_reward": ("bench.bench_implicit_reward", "implicit_reward.json"),
    "loop": ("bench.bench_loop", "loop.json"),
    "loop-shapes": ("bench.bench_loop_shapes", "loop_shapes.json"),
    "eval": ("bench.bench_eval", "eval.json"),
    "lora": ("bench.bench_lora", "lora.json"),
}


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    ap.add_argument(
        "--profile",
        choices=["cpu", "gpu", "smoke"],
        default=None,
        help="sizes (default: gpu if torch.cuda.is_available() else cpu)",
    )
    ap.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma list of {','.join(SECTIONS)} (default: all but loop, loop-shapes, eval and lora)",
    )
    ap.add_argument("--out", default=None, help="results folder (default bench/results/<device>)")
    ap.add_argument("--contenders", default=None, help="comma list overriding the profile's kernel contenders")
    ap.add_argument("--trainers", default=None, help="comma list of lrdpo_fast,trl,trl_liger")
    ap.add_argument("--in-process", action="store_true", help="no worker processes (debugging; memory less exact)")
    return ap.parse_args(argv)


def run_standalone(section: str, args: list[str], out_dir: Path) -> dict:
    """Run a standalone benchmark script's main with ``--out out_dir``; its JSON, or a status."""
    import importlib

    module, name = STANDALONE[section]
    print(f"{section}: python -m {module} {' '.join(args)}", flush=True)
    path = out_dir / name
    before = path.stat().st_mtime_ns if path.is_file() else None
    try:
        rc = importlib.import_module(module).main([*args, "--out", str(out_dir)])
    except Exception as e:  # noqa: BLE001 - one broken section never stops the suite
        return {"status": f"n/a: {type(e).__name__}: {str(e)[:200]}"}
    if rc or not path.is_file() or path.stat().st_mtime_ns == before:
        return {"status": f"n/a: {module} exited {rc} without writing {name}"}
    return {"status": "ok", **json.loads(path.read_text())}


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    device = default_device()
    profile = args.profile or ("gpu" if device == "cuda" else "cpu")
    if profile == "gpu" and device != "cuda":
        print("profile gpu needs CUDA (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    prof = get_profile(profile, device="cuda" if profile == "gpu" else "cpu")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        print(f"--only: unknown section(s) {unknown}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    from .contenders import CONTENDERS
    from .train_step import TRAINERS

    contenders = args.contenders.split(",") if args.contenders else None
    trainers = args.trainers.split(",") if args.trainers else None
    for flag, given, known in (("--contenders", contenders, CONTENDERS), ("--trainers", trainers, TRAINERS)):
        bad = [k for k in given or [] if k not in known]
        if bad:
            print(f"{flag}: unknown {bad}; choose from {list(known)}", file=sys.stderr)
            return 2
    isolate = not args.in_process
    default_dir = device_slug(prof["device"]) + ("-smoke" if profile == "smoke" else "")
    out_dir = Path(args.out) if args.out else REPO / "bench" / "results" / default_dir
    t_start = time.perf_counter()

    from .cells import run_cell

    meta = metadata_record(prof["device"])
    print(f"lrdpo-fast bench, profile {profile}: {meta['device_name']}, commit {meta['git_commit']}")
    mm_spec = {"kind": "matmul", "device": prof["device"], **prof["matmul"]}
    matmul = run_cell(mm_spec, isolate=isolate, timeout=300)
    matmul = matmul if matmul.get("status") == "ok" else None
    if matmul:
        print(f"matmul {matmul['dtype']} {matmul['shape'][0]}^3: {matmul['flops_per_s'] / 1e12:.3f} TFLOP/s")

    old = out_dir / "results.json"
    results = json.loads(old.read_text()) if old.is_file() else {}
    if results.get("profile") not in (None, profile):
        results = {}  # never mix profiles in one file
    if results.get("matmul") and not {"kernel", "scaling"} & set(only):
        matmul = results["matmul"]  # the throughput the kept kernel goals and scaling roofline were read against
    results.update(profile=profile, meta=meta, matmul=matmul)
    section_meta = {"git_commit": meta["git_commit"], "date_utc": meta["date_utc"]}
    if "kernel" in only:
        from .kernel import run_kernel

        results["kernel"] = run_kernel(prof, isolate=isolate, contenders=contenders) | {"meta": section_meta}
        results["goals"] = report.goals(results["kernel"], matmul, prof["device"])
    if "scaling" in only:
        from .plots import plot_scaling
        from .scaling import run_scaling

        results["scaling"] = run_scaling(prof, isolate=isolate, contenders=contenders) | {"meta": section_meta}
        out_dir.mkdir(parents=True, exist_ok=True)
        results["scaling"]["plots"] = plot_scaling(results["scaling"], matmul, out_dir, meta["device_slug"])
    if "train" in only:
        from .train import run_train

        results["train"] = run_train(prof, isolate=isolate, trainers=trainers) | {"meta": section_meta}
    for section in (s for s in STANDALONE if s in only):
        if section not in prof:
            print(f"{section}: skipped (the {profile} profile has no settings for it)")
            continue
        res = run_standalone(section, prof[section]["args"], out_dir)
        results[section] = res if "meta" in res else res | {"meta": section_meta}  # the script's own provenance
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    report.write(results, out_dir)
    print()
    print(report.render(results))
    for line in results.get("goals", []):
        print(line)
    print(f"\nwrote {out_dir}/results.json, results.md ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
