"""``lrdpo-fast train``: one LR-DPO training run from a YAML config or the embedded example.

    lrdpo-fast train CONFIG.yaml [--max-steps N] [--output-dir DIR] [--resume [PATH]]
    lrdpo-fast train --example [--max-steps N] [--output-dir DIR]
    torchrun --nproc_per_node K -m lrdpo_fast.cli train CONFIG.yaml

CONFIG.yaml holds ``TrainConfig`` fields plus five CLI-only keys (``model`` and ``data`` required):
- ``model``: a local ``save_pretrained`` folder, or ``example`` (the embedded tiny Llama);
- ``tokenizer`` (optional): a local tokenizer folder (default: the model folder), or ``example``;
- ``data``: a JSONL file / local dataset file or folder of preference pairs, or ``example``;
- ``ref_model`` (optional): a local folder for the reference (default: the initial policy);
- ``trust_remote_code`` (optional, default false): let transformers run the folders' own code.
Relative paths are resolved against the YAML file's folder. Model folders are loaded from
safetensors only, never from the Hub.
"""

from __future__ import annotations

from pathlib import Path

CLI_KEYS = ("model", "tokenizer", "data", "ref_model")


def add_parser(sub) -> None:
    """Register ``lrdpo-fast train`` on the subcommand parsers ``sub``."""
    t = sub.add_parser("train", help="train a policy with LR-DPO")
    t.add_argument("config", nargs="?", help="YAML config (TrainConfig fields + model/tokenizer/data)")
    t.add_argument("--example", action="store_true", help="train on the embedded example (tiny Llama, 64 pairs)")
    t.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    t.add_argument("--output-dir", default=None, help="override output_dir")
    t.add_argument("--seed", type=int, default=None, help="override seed")
    t.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="resume from a checkpoint folder (default: the latest in output_dir)",
    )
    t.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    t.add_argument(
        "--iteration",
        type=int,
        default=None,
        help="with an iterate RUN.yaml: run the loop up to the train phase of this iteration",
    )
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --iteration: override a run key")
    t.add_argument("--run-dir", default=None, help="with --iteration: override run_dir")
    t.set_defaults(run=run)


def load_run_spec(path: str | Path, **overrides):
    """Split a CLI YAML into (TrainConfig, {model, tokenizer, data, ref_model}); paths resolved
    against the YAML's folder. Unknown keys -> ValueError naming them."""
    from ..data.files import read_yaml_mapping, resolve_path
    from ..train.config import TrainConfig

    p = Path(path)
    values = read_yaml_mapping(p)
    trust = values.pop("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ValueError(f"config {str(p)!r}: trust_remote_code must be true or false, got {trust!r}")
    for k in CLI_KEYS:
        v = values.get(k)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"config {str(p)!r}: {k} must be a path string or 'example', got {type(v).__name__} {v!r}")
    spec = {k: resolve_path(values.pop(k, None), p.parent) for k in CLI_KEYS}
    spec["trust_remote_code"] = trust
    if spec["model"] is None:
        raise ValueError(f"config {str(p)!r} needs a 'model' key (a local model folder or 'example')")
    if spec["data"] is None:
        raise ValueError(f"config {str(p)!r} needs a 'data' key (a JSONL file or 'example')")
    if spec["tokenizer"] is None:
        spec["tokenizer"] = spec["model"]
    return TrainConfig.from_dict(values, **overrides), spec


def build_run(spec: dict):
    """(model, tokenizer, pairs, ref_model) from a run spec (see ``load_run_spec``)."""
    from .. import examples as example
    from ..model.loading import load_causal_lm, load_tokenizer

    trust = spec.get("trust_remote_code", False)
    if spec["tokenizer"] == "example":
        tokenizer = example.example_tokenizer()
    else:
        tokenizer = load_tokenizer(spec["tokenizer"], "tokenizer", trust_remote_code=trust)
    if spec["model"] == "example":
        model = example.example_model(vocab_size=len(tokenizer))
    else:
        model = load_causal_lm(spec["model"], "model", trust_remote_code=trust)
    pairs = example.example_records() if spec["data"] == "example" else spec["data"]
    ref_model = None
    if spec.get("ref_model"):
        ref_model = load_causal_lm(spec["ref_model"], "ref_model", trust_remote_code=trust)
    return model, tokenizer, pairs, ref_model


def run(args) -> int:
    """``lrdpo-fast train``: build, train, print the summary; returns the exit code. With
    ``--iteration I`` the config is an iterate RUN.yaml and the loop's train phase runs."""
    if args.iteration is not None:
        from .iterate import run_phase

        args.command = "train"
        return run_phase(args)
    from .. import examples as example
    from ..train.trainer import Trainer

    if args.example == bool(args.config):
        raise ValueError("give a CONFIG.yaml or --example (exactly one)")
    cfg_path = example.CONFIG_PATH if args.example else args.config
    overrides = {"max_steps": args.max_steps, "output_dir": args.output_dir, "seed": args.seed}
    if args.no_progress:
        overrides["progress"] = False
    cfg, spec = load_run_spec(cfg_path, **overrides)
    model, tokenizer, pairs, ref_model = build_run(spec)
    trainer = Trainer(model, tokenizer, pairs, cfg, ref_model=ref_model)
    if trainer.dist.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"lrdpo-fast: {n_params / 1e6:.2f}M parameters, {len(trainer.examples)} pairs, "
            f"{trainer.total_steps} steps, device {trainer.device}, world size {trainer.dist.world_size}",
            flush=True,
        )
    trainer.train(resume_from_checkpoint=args.resume)
    if trainer.dist.is_main:
        print(f"metrics: {Path(cfg.output_dir) / 'metrics.jsonl'}  checkpoint: {trainer.last_checkpoint}")
        print(trainer.summary(), flush=True)
    if trainer.dist.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0
