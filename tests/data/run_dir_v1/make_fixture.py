"""Make a run directory with the code of the current checkout (PYTHONPATH), stopped after
iteration 0's pairs phase, for the resume-compatibility test."""

import sys
from pathlib import Path

CFG = {
    "policy": "example",
    "prompts": "example",
    "iterations": 2,
    "prompts_per_iteration": 12,
    "run_dir": None,
    "seed": 3,
    "sampler": {
        "n": 4,
        "temperature": 1.0,
        "max_new_tokens": 40,
        "dtype": "float32",
        "max_model_len": 96,
        "enforce_eager": True,
        "cpu_threads": 1,
    },
    "reward": {"callable": "lrdpo_fast.demo.task:judge"},
    "pairs": {"strategy": "best_worst", "length_alpha": 0.0, "drop_truncated": True},
    "train": {
        "beta": 0.1,
        "alpha": 0.05,
        "learning_rate": 5e-5,
        "lr_scheduler": "constant",
        "num_epochs": 1,
        "pairs_per_step": 4,
        "device": "cpu",
        "plot": False,
        "progress": False,
        "save_final": False,
    },
    "eval": {
        "prompts": "example",
        "num_prompts": 8,
        "n": 2,
        "judge": {"callable": "lrdpo_fast.demo.task:judge"},
        "metrics": {"true_accuracy": "lrdpo_fast.demo.task:true_accuracy"},
    },
}

if __name__ == "__main__":
    import lrdpo_fast as lf

    out = Path(sys.argv[1]).resolve()
    cfg = lf.IterateConfig.from_dict({**CFG, "run_dir": str(out)})
    lf.iterate(cfg, progress=False, stop_after=(0, "pairs"))
    print("ok", lf.__file__)
