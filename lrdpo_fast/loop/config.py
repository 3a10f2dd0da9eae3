"""``IterateConfig``: everything an iterative run needs, from one YAML file with strict keys.

    policy: example                 # a local save_pretrained folder, or the embedded demo policy
    tokenizer: null                 # default: the policy's
    prompts: prompts.jsonl          # {"prompt": str | chat messages} per line, or example
    iterations: 3
    prompts_per_iteration: 64       # drawn without replacement, seeded, per iteration
    run_dir: runs/my-run
    seed: 0
    sampler: {n: 4, temperature: 1.0, top_p: 1.0, max_new_tokens: 128}
    reward: {callable: "my_pkg.my_rewards:score"}   # or {reward_model: PATH} or {implicit: true}
    pairs: {strategy: best_worst, length_alpha: 0.0, drop_truncated: true}
    train: {beta: 0.1, alpha: 0.02, learning_rate: 5.0e-7, pairs_per_step: 32, num_epochs: 1}
    eval: {prompts: heldout.jsonl, n: 1, judge: {callable: ...}, metrics: {true_accuracy: "pkg.mod:fn"}}
    report_to: [tensorboard, wandb, mlflow]   # optional, any subset: one tracked run for the loop

Each section becomes its callee's own parameter object, built and checked once where the callee
lives: ``sampler:`` the sampler's ``SamplerSection`` (an ``EngineSpec`` and a ``GenerationSpec``),
``reward:`` a ``RewardSpec``, ``pairs:`` ``build_pairs``' ``PairsSpec``, ``train:`` a
``TrainConfig`` (any field except ``output_dir``, which the loop puts under ``run_dir``),
``eval:`` an ``EvalSpec``. ``IterateConfig`` checks only what is its own (paths, iterations,
seeds, prompt counts). An unknown key or a value of the wrong type or range raises ``ValueError``
naming it (``sampler.n``, ``train.beta``, ...). Relative paths resolve against the YAML file's
folder. ``describe_keys()`` documents every key (the CLI's ``--help``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.files import read_yaml_mapping, resolve_path
from ..ops.checks import check_int, check_str
from ..train.config import TrainConfig
from ..train.tracking import check_report_to
from .evaluation import EvalSpec
from .pairs import PairsSpec
from .rewards.spec import RewardSpec
from .sampler.specs import SamplerSection
from .sampler_reference import FLOAT32

EXAMPLE = "example"

KEY_DOCS = {
    "policy": "start policy: a local save_pretrained folder, or 'example' (the embedded demo policy)",
    "tokenizer": "tokenizer folder (default: the policy's)",
    "prompts": "JSONL file of {\"prompt\": str | chat messages}, or 'example' (the demo task's prompts)",
    "iterations": "number of sample -> score -> pair -> train rounds (int >= 1)",
    "prompts_per_iteration": "prompts drawn per iteration, without replacement, seeded (int >= 1)",
    "run_dir": "output folder of the run (resumable)",
    "seed": "seed of prompt draws, samples, pair choice and training (int >= 0)",
    "report_to": "trackers of the whole run (tensorboard, wandb, mlflow; default none): every training "
    "metrics row (steps counted across iterations) and summary row (as summary/<name> by iteration)",
    "sampler.n": "samples per prompt (int >= 2)",
    "sampler.temperature": "sampling temperature (>= 0)",
    "sampler.top_p": "nucleus mass in (0, 1]",
    "sampler.max_new_tokens": "response token budget (int >= 1)",
    "sampler.max_model_len": "engine context length (default: the model's)",
    "sampler.dtype": "engine dtype: auto, float32, bfloat16, float16",
    "sampler.gpu_memory_utilization": "vLLM's share of GPU memory (CPU: see VLLM_CPU_KVCACHE_SPACE)",
    "sampler.tensor_parallel_size": "GPUs per engine",
    "sampler.enforce_eager": "auto (default): decided from the device, model size and tokens per iteration "
    "(logged); true: no graph capture / compilation (faster start); false: compile",
    "sampler.cpu_threads": "CPU backend: torch threads while sampling (default: the process's; 1 suits small models)",
    "sampler.verify_sync": "after every weight sync, check the engine serves the new weights (raises WeightSyncError)",
    "reward.callable": "'package.module:function' taking (prompts, responses) -> list of floats",
    "reward.reward_model": "local sequence-classification folder (one output)",
    "reward.implicit": "true: DICE's implicit reward logp_policy - logp_ref",
    "reward.reference": "implicit reward: the reference of the start policy (a local folder)",
    "reward.batch_size": "reward model batch size",
    "pairs.strategy": "best_worst or best_random",
    "pairs.length_alpha": "pick on score - length_alpha * tokens; a float >= 0 or 'auto' (DICE)",
    "pairs.drop_truncated": "drop responses cut by max_new_tokens",
    "pairs.min_score_gap": "drop pairs whose score gap is <= this",
    "pairs.replay.pairs": "DICE replay: offline pairs (JSONL of prompt/chosen/rejected, or 'example'), never on a generated prompt",
    "pairs.replay.ratio": "DICE replay: the offline share of each iteration's training pairs, in [0, 1) (DICE: 0.5)",
    "train.*": "any TrainConfig field (beta, alpha, loss_type, learning_rate, ...) except output_dir",
    "train.ld_alpha": "LD-DPO: weight of the tokens past the pair's shared length, in [0, 1] (1 = DPO; default off)",
    "train.sampo": "SamPO: sum each response over l_p random positions (needs train.live_reference: true)",
    "train.reference": "pairs' reference log-probs: recompute (a fused pass of policy_i; default) or sampler "
    "(the engine's log-probs of the sampled tokens; needs sampler.dtype: float32; the mismatch is measured)",
    "train.wpo": "WPO: weight each pair's loss by how likely the current policy is to produce it",
    "train.lora": "LoRA through PEFT (the lora extra): {r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: "
    "all-linear or [q_proj, ...], bias: none, use_rslora: false}; only the adapter trains, the LM head stays "
    "frozen; after each iteration the adapter is merged into policy_{i+1} (what is saved and synced) and a "
    "fresh one starts the next (one process; not under torchrun)",
    "eval.prompts": "held-out prompts (JSONL or 'example'); no eval section = no evaluation",
    "eval.num_prompts": "how many held-out prompts to use (default: all)",
    "eval.n": "samples per held-out prompt",
    "eval.temperature": "sampling temperature of the evaluation (default: the sampler's)",
    "eval.max_new_tokens": "response budget of the evaluation (default: the sampler's)",
    "eval.judge": "a reward section scoring held-out responses (default: the run's reward)",
    "eval.metrics": "{name: 'package.module:function'} each (prompts, responses) -> float, per row",
}


def _fail(key: str, msg: str):
    raise ValueError(f"IterateConfig: {key} {msg}")


def _mapping(key: str, v: Any) -> dict:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        _fail(key, f"must be a mapping, got {type(v).__name__}")
    return dict(v)


def _strict(key: str, values: dict, allowed) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        _fail(key, f"has unknown key(s) {unknown}; valid keys are {sorted(allowed)}")


def _section(cls, key: str, values: Any):
    values = _mapping(key, values)
    _strict(key, values, [f.name for f in dataclasses.fields(cls)])
    try:
        return cls(**values)
    except TypeError as e:  # a required field is missing
        _fail(key, f"is incomplete: {e}")


def _eval_section(values: Any) -> EvalSpec:
    ev = _mapping("eval", values)
    if ev.get("judge") is not None:
        ev["judge"] = _reward_section(ev["judge"], "eval.judge")
    ev["metrics"] = _mapping("eval.metrics", ev.get("metrics"))
    return _section(EvalSpec, "eval", ev)


def _reward_section(values: Any, key: str = "reward") -> RewardSpec:
    return values if isinstance(values, RewardSpec) else _section(RewardSpec, key, values)


def _train_section(values: Any, seed: int) -> TrainConfig:
    """The ``train:`` mapping as the one ``TrainConfig`` of the run (seed: the run's unless set;
    ``output_dir`` is the loop's, per iteration)."""
    if isinstance(values, TrainConfig):
        return values
    values = _mapping("train", values)
    if "output_dir" in values:
        _fail("train.output_dir", "is set by the loop (run_dir/iter_<i>/train); remove it")
    try:
        return TrainConfig.from_dict({"seed": seed, "progress": True, **values})
    except ValueError as e:
        raise ValueError(f"IterateConfig: train: {e}") from None


# (key path, ...) of the values that are file or folder paths: resolved against the YAML's folder
PATH_KEYS = (
    ("policy",),
    ("prompts",),
    ("tokenizer",),
    ("run_dir",),
    ("reward", "reward_model"),
    ("reward", "reference"),
    ("eval", "prompts"),
    ("eval", "judge", "reward_model"),
    ("eval", "judge", "reference"),
    ("pairs", "replay", "pairs"),
)


def _resolve_paths(values: dict, base: Path) -> None:
    """Make the relative paths of a raw config mapping absolute against ``base`` (in place);
    'example' and values that are not strings (refused later, by name) stay as they are."""
    for keys in PATH_KEYS:
        holder = values
        for k in keys[:-1]:
            holder = holder.get(k) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(keys[-1]), str) and holder[keys[-1]]:
            holder[keys[-1]] = resolve_path(holder[keys[-1]], base, keep=(EXAMPLE,))


def _with_overrides(values: dict, overrides: dict[str, Any]) -> dict:
    """A copy of ``values`` (sections copied too) with ``key`` / ``section.key`` overrides set."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for key, v in overrides.items():
        if v is None:
            continue
        head, _, rest = key.partition(".")
        if not rest:
            out[key] = v
            continue
        section = out.setdefault(head, {})
        if section is None:
            section = out[head] = {}
        if not isinstance(section, dict):
            _fail(head, f"must be a mapping to set {key}")
        section[rest] = v
    return out


@dataclass
class IterateConfig:
    """A whole iterative LR-DPO run (see the module docstring for the YAML form). Sections given
    as mappings are built into their objects here; ``from_dict`` / ``from_yaml`` are the usual
    way in."""

    policy: str = EXAMPLE
    prompts: str = EXAMPLE
    tokenizer: str | None = None
    iterations: int = 3
    prompts_per_iteration: int = 64
    run_dir: str = "runs/iterate"
    seed: int = 0
    sampler: SamplerSection | dict = field(default_factory=dict)
    reward: RewardSpec | dict | None = None
    pairs: PairsSpec | dict = field(default_factory=dict)
    train: TrainConfig | dict = field(default_factory=dict)
    eval: EvalSpec | dict | None = None
    report_to: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.report_to = check_report_to("IterateConfig: report_to", self.report_to)
        for key in ("policy", "prompts"):
            check_str(f"IterateConfig: {key}", getattr(self, key))
        if self.tokenizer is not None:
            check_str("IterateConfig: tokenizer", self.tokenizer)
        check_int("IterateConfig: iterations", self.iterations, 1)
        check_int("IterateConfig: prompts_per_iteration", self.prompts_per_iteration, 1)
        self.run_dir = check_str("IterateConfig: run_dir", str(self.run_dir))
        check_int("IterateConfig: seed", self.seed, 0)
        if not isinstance(self.sampler, SamplerSection):  # a pair needs two samples of a prompt
            self.sampler = SamplerSection.from_mapping(_mapping("sampler", self.sampler), "IterateConfig: sampler.", 2)
        if self.reward is None:
            _fail("reward", "is missing: give {callable: ...}, {reward_model: PATH} or {implicit: true}")
        self.reward = _reward_section(self.reward)
        if not isinstance(self.pairs, PairsSpec):
            self.pairs = PairsSpec(**_section_values("pairs", self.pairs, PairsSpec), where="IterateConfig: pairs.")
        self.train = _train_section(self.train, self.seed)
        if self.train.reference == "sampler" and self.sampler.engine.dtype not in FLOAT32:
            _fail(
                "train.reference",
                f"'sampler' needs sampler.dtype: float32 (got {self.sampler.engine.dtype!r}): the engine's "
                "log-probs must match the float32 reference pass",
            )
        if self.eval is not None and not isinstance(self.eval, EvalSpec):
            self.eval = _eval_section(self.eval)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], *, base_dir: str | Path | None = None, **overrides: Any
    ) -> IterateConfig:
        """Build from a mapping. ``overrides``: top-level keys or dotted ``section.key`` names
        (``**{"sampler.n": 8}``); ``base_dir`` resolves relative paths."""
        if not isinstance(values, dict):
            raise ValueError(f"IterateConfig: expected a mapping, got {type(values).__name__}")
        values = _with_overrides(values, overrides)
        _strict("config", values, [f.name for f in dataclasses.fields(cls)])
        if base_dir is not None:
            _resolve_paths(values, Path(base_dir))
        if "reward" in values and values["reward"] is None:  # written but empty: say what it needs
            values["reward"] = {}
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> IterateConfig:
        """Load ``path`` (strict keys); relative paths resolve against its folder. ValueError
        naming the file on a missing, unreadable or non-mapping YAML. A run directory's
        ``config.yaml`` is read as that run's config, with ``run_dir`` the folder it lies in."""
        values = read_yaml_mapping(path)
        folder = Path(path).resolve().parent
        if "run_format" in values and isinstance(values.get("config"), dict):
            # a run directory's own config.yaml: continue that run where it lies (lrdpo-fast
            # iterate RUN_DIR/config.yaml --iterations N extends it, e.g. a demo run)
            values = {**values["config"], "run_dir": str(folder)}
        return cls.from_dict(values, base_dir=folder, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable, every default filled in); ``from_dict`` reads
        it back equal."""
        train = self.train.to_dict()
        train.pop("output_dir")
        return {
            "policy": self.policy,
            "prompts": self.prompts,
            "tokenizer": self.tokenizer,
            "iterations": self.iterations,
            "prompts_per_iteration": self.prompts_per_iteration,
            "run_dir": self.run_dir,
            "seed": self.seed,
            "sampler": self.sampler.to_dict(),
            "reward": dataclasses.asdict(self.reward),
            "pairs": self.pairs.to_dict(),
            "train": train,
            "eval": None if self.eval is None else dataclasses.asdict(self.eval),
            "report_to": list(self.report_to),
        }

    def to_yaml(self) -> str:
        """The resolved config as YAML text."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _section_values(key: str, values: Any, cls) -> dict:
    values = _mapping(key, values)
    _strict(key, values, [f.name for f in dataclasses.fields(cls) if f.name != "where"])
    return values


def describe_keys() -> str:
    """One line per key: what it means (used by ``lrdpo-fast iterate --help``)."""
    width = max(len(k) for k in KEY_DOCS)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in KEY_DOCS.items())
