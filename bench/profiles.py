"""Benchmark sizes. `cpu` (kernel, scaling, train) finishes in under 10 minutes on 2 cores, the
sampler and implicit-reward sections add about 3 minutes each, the opt-in loop section 3-5, lora about 3; `gpu` is the bf16 table at
LLM scale (d=4096, V=128256, N up to 32768); `smoke` is the CI-sized toy."""

from __future__ import annotations

ALL_KERNEL = [
    "lrdpo_fast",
    "lrdpo_fast_lean",
    "lrdpo_fast_unfused",
    "naive",
    "torch_lce",
    "liger",
    "liger_pairs",
    "cce",
    "cce_compile",
]
SCALING = ["lrdpo_fast", "naive", "torch_lce", "liger", "liger_pairs", "cce", "cce_compile"]

PROFILES: dict[str, dict] = {
    "cpu": {
        "device": "cpu",
        "dtype": "fp32",
        "matmul": {"size": 2048, "dtype": "fp32"},
        # lrdpo_fast_unfused left out to stay under 10 minutes (add it with --contenders)
        "kernel": {
            "N": 4096,
            "d": 512,
            "V": 32000,
            "warmup": 2,
            "repeats": 3,
            "contenders": [c for c in ALL_KERNEL if c != "lrdpo_fast_unfused"],
        },
        "scaling": {
            # cce: Triton/CUDA only (its n/a row is in the kernel table); Liger's padded batch is
            # the slowest cell on CPU, its per-pair form stands for Liger in the sweeps
            "contenders": ["lrdpo_fast", "naive", "torch_lce", "liger_pairs", "cce_compile"],
            "warmup": 1,
            "repeats": 3,
            "N": {"values": [256, 512, 1024, 2048], "d": 256, "V": 8192},
            "V": {"values": [2048, 4096, 8192, 16384], "N": 1024, "d": 256},
        },
        "train": {
            "n_pairs": 16,
            "pairs_per_step": 4,
            "epochs": 1,
            "max_tokens_per_batch": 4096,
            "trainers": ["lrdpo_fast", "trl", "trl_liger"],
        },
        # the standalone scripts, with these command-line arguments (their defaults are the CPU sizes)
        "sampler": {"args": []},
        "implicit_reward": {"args": ["--device", "cpu"]},
        "loop": {"args": []},
        "loop-shapes": {"args": []},
        "eval": {"args": []},
        "lora": {"args": []},
        "cell_timeout": 600,
    },
    "gpu": {
        "device": "cuda",
        "dtype": "bf16",
        "matmul": {"size": 8192, "dtype": "bf16"},
        "kernel": {
            "N": 16384,
            "d": 4096,
            "V": 128256,
            "warmup": 2,
            "repeats": 5,
            "contenders": [c for c in ALL_KERNEL if c != "lrdpo_fast_lean"],
        },  # chunks: torch only
        "scaling": {
            "contenders": SCALING,
            "warmup": 2,
            "repeats": 5,
            "N": {"values": [2048, 4096, 8192, 16384, 32768], "d": 4096, "V": 128256},
            "V": {"values": [32000, 65536, 128256, 262144], "N": 8192, "d": 4096},
        },
        "train": {
            "n_pairs": 256,
            "pairs_per_step": 32,
            "epochs": 1,
            "max_tokens_per_batch": 16384,
            "trainers": ["lrdpo_fast", "trl", "trl_liger"],
        },
        "sampler": {"args": []},
        "implicit_reward": {"args": ["--device", "cuda", "--dtype", "bfloat16"]},
        # loop: the scripted-pipeline comparison is a CPU one (bench/bench_loop.py)
        "cell_timeout": 900,
    },
    "smoke": {
        "device": "cpu",
        "dtype": "fp32",
        "matmul": {"size": 256, "dtype": "fp32"},
        "kernel": {
            "N": 64,
            "d": 16,
            "V": 100,
            "warmup": 0,
            "repeats": 1,
            "contenders": ["lrdpo_fast", "naive", "reference64"],
        },
        "scaling": {
            "contenders": ["lrdpo_fast", "naive"],
            "warmup": 0,
            "repeats": 1,
            "N": {"values": [32, 64], "d": 16, "V": 100},
            "V": {"values": [50, 100], "N": 64, "d": 16},
        },
        "train": {
            "n_pairs": 4,
            "pairs_per_step": 2,
            "epochs": 1,
            "max_tokens_per_batch": 1024,
            "trainers": ["lrdpo_fast", "trl"],
            "tiny": True,
        },
        "lora": {
            "args": "--hidden 64 --layers 1 --intermediate 128 --vocab 512 --tiny-pairs --repeats 1 --rank 4".split()
        },
        # no vLLM engine in the smoke profile (sampler, loop): start-up alone is a minute
        "implicit_reward": {
            "args": [
                "--device",
                "cpu",
                "--prompts",
                "2",
                "--samples",
                "2",
                "--hidden",
                "32",
                "--layers",
                "1",
                "--vocab",
                "256",
                "--prompt-median",
                "8",
                "--response-median",
                "8",
                "--max-len",
                "32",
                "--warmup",
                "0",
                "--repeats",
                "1",
            ]
        },
        "cell_timeout": 300,
    },
}


def get_profile(name: str, device: str | None = None) -> dict:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}")
    prof = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PROFILES[name].items()}
    prof["name"] = name
    if device is not None:
        prof["device"] = device
    return prof
