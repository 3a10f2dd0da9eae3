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

Every key is checked at construction: an unknown key or a value of the wrong type or range raises
``ValueError`` naming it (``sampler.n``, ``train.beta``, ...). Relative paths resolve against the
YAML file's folder. ``train`` takes any ``TrainConfig`` field except ``output_dir`` (the loop
puts it under ``run_dir``). ``describe_keys()`` documents every key (the CLI's ``--help``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train.config import TrainConfig

EXAMPLE = "example"
STRATEGIES = ("best_worst", "best_random")

KEY_DOCS = {
    "policy": "start policy: a local save_pretrained folder, or 'example' (the embedded demo policy)",
    "tokenizer": "tokenizer folder (default: the policy's)",
    "prompts": "JSONL file of {\"prompt\": str | chat messages}, or 'example' (the demo task's prompts)",
    "iterations": "number of sample -> score -> pair -> train rounds (int >= 1)",
    "prompts_per_iteration": "prompts drawn per iteration, without replacement, seeded (int >= 1)",
    "run_dir": "output folder of the run (resumable)",
    "seed": "seed of prompt draws, samples, pair choice and training (int >= 0)",
    "sampler.n": "samples per prompt (int >= 2)",
    "sampler.temperature": "sampling temperature (>= 0)",
    "sampler.top_p": "nucleus mass in (0, 1]",
    "sampler.max_new_tokens": "response token budget (int >= 1)",
    "sampler.max_model_len": "engine context length (default: the model's)",
    "sampler.dtype": "engine dtype: auto, float32, bfloat16, float16",
    "sampler.gpu_memory_utilization": "vLLM's share of GPU memory (CPU: see VLLM_CPU_KVCACHE_SPACE)",
    "sampler.tensor_parallel_size": "GPUs per engine",
    "sampler.enforce_eager": "true: no graph capture / compilation (faster start, slower steps on big models)",
    "sampler.cpu_threads": "CPU backend: torch threads while sampling (default: the process's; 1 suits small models)",
    "reward.callable": "'package.module:function' taking (prompts, responses) -> list of floats",
    "reward.reward_model": "local sequence-classification folder (one output)",
    "reward.implicit": "true: DICE's implicit reward logp_policy - logp_ref",
    "reward.reference": "implicit reward: the reference of the start policy (a local folder)",
    "reward.batch_size": "reward model batch size",
    "pairs.strategy": "best_worst or best_random",
    "pairs.length_alpha": "pick on score - length_alpha * tokens; a float >= 0 or 'auto' (DICE)",
    "pairs.drop_truncated": "drop responses cut by max_new_tokens",
    "pairs.min_score_gap": "drop pairs whose score gap is <= this",
    "train.*": "any TrainConfig field (beta, alpha, loss_type, learning_rate, ...) except output_dir",
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


def _int(key: str, v: Any, lo: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        _fail(key, f"must be an int >= {lo}, got {v!r}")
    return v


def _num(key: str, v: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        _fail(key, f"must be a finite number, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        _fail(key, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
    return float(v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        _fail(key, f"must be true or false, got {v!r}")
    return v


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        _fail(key, f"must be a non-empty string, got {v!r}")
    return v


def _mapping(key: str, v: Any) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        _fail(key, f"must be a mapping, got {type(v).__name__}")
    return dict(v)


def _strict(key: str, values: dict, allowed) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        _fail(key, f"has unknown key(s) {unknown}; valid keys are {sorted(allowed)}")


@dataclass
class SamplerSpec:
    """The ``sampler`` section: generation settings and engine options."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    max_model_len: int | None = None
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        _int("sampler.n", self.n, 2)
        _bool("sampler.enforce_eager", self.enforce_eager)
        if self.cpu_threads is not None:
            _int("sampler.cpu_threads", self.cpu_threads, 1)
        self.temperature = _num("sampler.temperature", self.temperature, 0.0)
        self.top_p = _num("sampler.top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _int("sampler.max_new_tokens", self.max_new_tokens, 1)
        if self.max_model_len is not None:
            _int("sampler.max_model_len", self.max_model_len, 2)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            _fail("sampler.dtype", f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        self.gpu_memory_utilization = _num(
            "sampler.gpu_memory_utilization", self.gpu_memory_utilization, 0.0, 1.0, lo_open=True
        )
        _int("sampler.tensor_parallel_size", self.tensor_parallel_size, 1)


@dataclass
class RewardSpec:
    """The ``reward`` section: exactly one of ``callable``, ``reward_model``, ``implicit``."""

    callable: str | None = None
    reward_model: str | None = None
    implicit: bool = False
    reference: str | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        chosen = [k for k in ("callable", "reward_model") if getattr(self, k) is not None]
        if _bool("reward.implicit", self.implicit):
            chosen.append("implicit")
        if len(chosen) != 1:
            _fail("reward", f"needs exactly one of callable, reward_model, implicit; got {chosen or 'none'}")
        if self.callable is not None:
            _str("reward.callable", self.callable)
            if ":" not in self.callable:
                _fail("reward.callable", f"must look like 'package.module:function', got {self.callable!r}")
        if self.reward_model is not None:
            _str("reward.reward_model", self.reward_model)
        if self.implicit and self.reference is None:
            _fail("reward.reference", "is needed with implicit: true (the start policy's own reference folder)")
        _int("reward.batch_size", self.batch_size, 1)


@dataclass
class PairsSpec:
    """The ``pairs`` section: how ``build_pairs`` picks chosen/rejected."""

    strategy: str = "best_worst"
    length_alpha: float | str = 0.0
    drop_truncated: bool = True
    min_score_gap: float = 0.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            _fail("pairs.strategy", f"must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.length_alpha != "auto":
            self.length_alpha = _num("pairs.length_alpha", self.length_alpha, 0.0)
        _bool("pairs.drop_truncated", self.drop_truncated)
        self.min_score_gap = _num("pairs.min_score_gap", self.min_score_gap, 0.0)


@dataclass
class EvalSpec:
    """The ``eval`` section: held-out prompts, judged after every iteration (row 0 = the start)."""

    prompts: str
    num_prompts: int | None = None
    n: int = 1
    temperature: float | None = None
    max_new_tokens: int | None = None
    judge: RewardSpec | None = None
    metrics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _str("eval.prompts", self.prompts)
        if self.num_prompts is not None:
            _int("eval.num_prompts", self.num_prompts, 1)
        _int("eval.n", self.n, 1)
        if self.temperature is not None:
            self.temperature = _num("eval.temperature", self.temperature, 0.0)
        if self.max_new_tokens is not None:
            _int("eval.max_new_tokens", self.max_new_tokens, 1)
        for name, spec in self.metrics.items():
            _str(f"eval.metrics.{name}", spec)


def _section(cls, key: str, values: Any):
    values = _mapping(key, values)
    _strict(key, values, [f.name for f in dataclasses.fields(cls)])
    try:
        return cls(**values)
    except TypeError as e:  # a required field is missing
        _fail(key, f"is incomplete: {e}")


@dataclass
class IterateConfig:
    """A whole iterative LR-DPO run (see the module docstring for the YAML form)."""

    policy: str = EXAMPLE
    prompts: str = EXAMPLE
    tokenizer: str | None = None
    iterations: int = 3
    prompts_per_iteration: int = 64
    run_dir: str = "runs/iterate"
    seed: int = 0
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    reward: RewardSpec | None = None
    pairs: PairsSpec = field(default_factory=PairsSpec)
    train: dict[str, Any] = field(default_factory=dict)
    eval: EvalSpec | None = None

    def __post_init__(self) -> None:
        _str("policy", self.policy)
        _str("prompts", self.prompts)
        if self.tokenizer is not None:
            _str("tokenizer", self.tokenizer)
        _int("iterations", self.iterations, 1)
        _int("prompts_per_iteration", self.prompts_per_iteration, 1)
        _str("run_dir", str(self.run_dir))
        self.run_dir = str(self.run_dir)
        _int("seed", self.seed, 0)
        if self.reward is None:
            _fail("reward", "is missing: give {callable: ...}, {reward_model: PATH} or {implicit: true}")
        self.train = _mapping("train", self.train)
        if "output_dir" in self.train:
            _fail("train.output_dir", "is set by the loop (run_dir/iter_<i>/train); remove it")
        try:
            self.train_config()
        except ValueError as e:
            raise ValueError(f"IterateConfig: train: {e}") from None

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The ``TrainConfig`` of one iteration (``overrides``, e.g. output_dir, win)."""
        values = {"seed": self.seed, "progress": True, **self.train, **overrides}
        return TrainConfig.from_dict(values)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], *, base_dir: str | Path | None = None, **overrides: Any
    ) -> IterateConfig:
        """Build from a mapping. ``overrides``: top-level keys or dotted ``section.key`` names
        (``**{"sampler.n": 8}``); ``base_dir`` resolves relative paths."""
        if not isinstance(values, dict):
            raise ValueError(f"IterateConfig: expected a mapping, got {type(values).__name__}")
        values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
        for key, v in overrides.items():
            if v is None:
                continue
            head, _, rest = key.partition(".")
            if rest:
                sec = values.get(head)
                if sec is None:
                    sec = values[head] = {}
                if not isinstance(sec, dict):
                    _fail(head, f"must be a mapping to set {key}")
                sec[rest] = v
            else:
                values[key] = v
        top = [f.name for f in dataclasses.fields(cls)]
        _strict("config", values, top)
        kw = dict(values)
        if "sampler" in kw:
            kw["sampler"] = _section(SamplerSpec, "sampler", kw["sampler"])
        if "reward" in kw:
            kw["reward"] = _section(RewardSpec, "reward", kw["reward"])
        if "pairs" in kw:
            kw["pairs"] = _section(PairsSpec, "pairs", kw["pairs"])
        if kw.get("eval") is not None:
            ev = _mapping("eval", kw["eval"])
            if ev.get("judge") is not None:
                ev["judge"] = _section(RewardSpec, "eval.judge", ev["judge"])
            ev["metrics"] = _mapping("eval.metrics", ev.get("metrics"))
            kw["eval"] = _section(EvalSpec, "eval", ev)
        cfg = cls(**kw)
        if base_dir is not None:
            cfg.resolve_paths(Path(base_dir))
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> IterateConfig:
        """Load ``path`` (strict keys); relative paths resolve against its folder. ValueError
        naming the file on a missing, unreadable or non-mapping YAML."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config path {str(p)!r} does not exist")
        try:
            values = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"config {str(p)!r}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"config {str(p)!r} must hold a mapping of keys, got {type(values).__name__}")
        return cls.from_dict(values, base_dir=p.resolve().parent, **overrides)

    def resolve_paths(self, base: Path) -> None:
        """Make relative paths absolute against ``base`` (the YAML's folder); 'example' stays."""

        def fix(v):
            if v is None or v == EXAMPLE or ":" in str(v) and not Path(str(v)).exists() and "/" not in str(v):
                return v
            p = Path(v)
            return str(p if p.is_absolute() else (base / p).resolve())

        self.policy, self.prompts, self.tokenizer, self.run_dir = (
            fix(self.policy),
            fix(self.prompts),
            fix(self.tokenizer),
            fix(self.run_dir),
        )
        for spec in (self.reward, self.eval.judge if self.eval else None):
            if spec is not None:
                spec.reward_model, spec.reference = fix(spec.reward_model), fix(spec.reference)
        if self.eval is not None:
            self.eval.prompts = fix(self.eval.prompts)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable); ``from_dict`` reads it back equal."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML text."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def describe_keys() -> str:
    """One line per key: what it means (used by ``lrdpo-fast iterate --help``)."""
    width = max(len(k) for k in KEY_DOCS)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in KEY_DOCS.items())
