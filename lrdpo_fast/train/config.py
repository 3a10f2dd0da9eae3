"""TrainConfig: every knob of an LR-DPO training run, loadable from YAML.

One flat dataclass, validated on construction: a bad value raises ``ValueError`` naming the
field, and an unknown key in a YAML file or dict raises ``ValueError`` naming the key (a typo
never silently falls back to a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.files import read_yaml_mapping
from ..ops.checks import check_choice, check_int, check_number
from ..ops.losses import LENGTH_NORMALIZED, LossArgs
from .lora import check_lora
from .tracking import check_report_to

LR_SCHEDULES = ("linear", "cosine", "constant")
DTYPES = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "triton")
REFERENCES = ("recompute", "sampler")


@dataclass
class TrainConfig:
    """Hyper-parameters of one LR-DPO training run (one iteration of the iterative loop).

    Objective (see docs/algorithms.md): ``beta``, ``alpha`` (length term, tokens), ``loss_type`` (one of
    ``lrdpo_fast.LOSS_TYPES``), ``gamma`` (SimPO margin), ``label_smoothing``.

    Length control and weighting (docs/ALGORITHMS.md, "Length control inside the log-prob sums"):
    ``ld_alpha`` in [0, 1] (LD-DPO: each response's tokens past the pair's shared length l_p count
    ld_alpha times; None or 1 is DPO), ``sampo`` (SamPO: each response's log-prob sums l_p of its
    tokens drawn uniformly, seeded per pair and epoch; needs ``live_reference`` so the reference
    sums the same positions), ``wpo`` (WPO: each pair's loss times w_chosen * w_rejected, no
    gradient; the metrics rows carry the mean pair weight as ``wpo/weight``). The reference
    log-probs are summed with the same token weights.

    Optimisation: AdamW (``learning_rate``, ``weight_decay``, ``adam_beta1/2``, ``adam_eps``),
    gradient clipping at ``max_grad_norm`` (``None`` or 0 disables it), a learning-rate schedule
    ``lr_scheduler`` in (linear, cosine, constant) decaying to 0 at the last step, after a linear
    warm-up of ``warmup_steps`` steps or ``warmup_ratio`` of all steps (not both).

    Length of the run: ``max_steps`` when set, else ``num_epochs`` passes over the pairs. One step
    consumes ``pairs_per_step`` pairs (the last step of an epoch takes the remainder), split into
    packed micro-batches of at most ``max_tokens_per_batch`` tokens (gradient accumulation).

    Data: ``max_length`` / ``max_prompt_length`` truncate at tokenization, ``shuffle`` reshuffles
    the pairs every epoch with ``seed``.

    Numerics and devices: ``dtype`` "auto" = bf16 autocast on CUDA and fp32 on CPU; ``device``
    None = cuda when available; ``backend`` for the fused kernels ("auto", "torch", "triton");
    ``gradient_checkpointing`` on the decoder layers.

    Guard: a step whose loss or gradient norm is not finite (or whose forward met non-finite
    hidden states or LM-head values) is skipped: its gradients are dropped, the optimizer and
    the LR schedule do not step (the schedule counts applied updates), its metrics row is logged
    with ``"skipped": true``, and no checkpoint is written at it. ``max_bad_steps`` consecutive
    skipped steps stop the run with ``NonFiniteTrainingError``; the last checkpoint (written at a
    good step) stays as it was.

    Reference: log-probs precomputed once from the reference model unless ``live_reference``,
    which runs the reference forward on every micro-batch (no precompute pass, more compute).
    ``reference`` says where the iterative loop takes the pairs' reference log-probs from:
    "recompute" (default: a packed, fused pass of policy_i over the pairs) or "sampler" (the
    sampling engine's own log-probs of the sampled tokens: policy_i is the reference, so no pass;
    see ``lrdpo_fast/loop/sampler_reference.py``). A Trainer used alone ignores it.

    Output: ``output_dir`` receives metrics.jsonl, checkpoints (``save_steps``: every N steps,
    None = only the final one when ``save_final``), ``logging_steps`` between metrics rows,
    ``progress`` toggles the tqdm bar, ``plot`` writes training_curves.png at the end.
    ``report_to``: trackers that get a copy of every metrics row, same names and steps (any of
    "tensorboard", "wandb", "mlflow"; default none; the ``track`` extra; see ``train/tracking.py``).

    LoRA: ``lora`` (None = full fine-tuning) a mapping of PEFT's LoRA settings (``r``,
    ``lora_alpha``, ``lora_dropout``, ``target_modules`` default "all-linear", ``bias``,
    ``use_rslora``) or a ``peft.LoraConfig``: only adapter weights train, the LM head stays
    frozen, the reference is the model with its adapters off (``train/lora.py``; the ``lora`` extra).
    """

    # objective
    beta: float = 0.1
    alpha: float = 0.0
    loss_type: str = "sigmoid"
    gamma: float = 0.0
    label_smoothing: float = 0.0
    ld_alpha: float | None = None
    sampo: bool = False
    wpo: bool = False
    # optimiser and schedule
    learning_rate: float = 5e-7
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    # length of the run and batching
    num_epochs: int = 1
    max_steps: int | None = None
    pairs_per_step: int = 32
    max_tokens_per_batch: int = 8192
    # data
    max_length: int | None = None
    max_prompt_length: int | None = None
    shuffle: bool = True
    seed: int = 0
    # numerics and devices
    dtype: str = "auto"
    device: str | None = None
    backend: str = "auto"
    gradient_checkpointing: bool = False
    max_bad_steps: int = 3
    # reference
    live_reference: bool = False
    reference: str = "recompute"
    # output
    output_dir: str = "out"
    save_steps: int | None = None
    save_final: bool = True
    logging_steps: int = 1
    progress: bool = True
    plot: bool = True
    report_to: list[str] = field(default_factory=list)
    lora: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form user notes, copied to the run's config.yaml

    def __post_init__(self) -> None:
        _normalize(self)  # first: a LoraConfig or a single tracker name become the stored form
        _check_types(self)
        self.loss_args()
        _check_numbers(self)
        _check_ints(self)
        _check_choices(self)
        _check_combinations(self)
        if not str(self.output_dir):
            raise ValueError(f"TrainConfig: output_dir must be a non-empty path, got {self.output_dir!r}")
        self.output_dir = str(self.output_dir)

    def loss_args(self) -> LossArgs:
        """The objective's fields (loss_type, beta, alpha, gamma, label_smoothing) as one
        validated ``LossArgs``: the trainer builds it once per run and hands it to every
        micro-batch's fused loss, which then does not check them again."""
        try:
            return LossArgs(self.loss_type, self.beta, self.alpha, self.gamma, self.label_smoothing)
        except ValueError as e:  # already names the field
            raise ValueError(f"TrainConfig: {e}") from None

    # ---- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """Names of every config field, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> TrainConfig:
        """Build from a mapping; unknown keys raise ValueError naming them. ``overrides`` win."""
        if not isinstance(values, dict):
            raise ValueError(f"TrainConfig: expected a mapping of field -> value, got {type(values).__name__}")
        merged = {**values, **{k: v for k, v in overrides.items() if v is not None}}
        known = set(cls.field_names())
        unknown = sorted(k for k in merged if k not in known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML mapping (see ``lrdpo_fast/examples/config.yaml``); unknown keys -> ValueError."""
        values = read_yaml_mapping(path)
        return cls.from_dict(values, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML text; written to ``path`` when given. ``from_yaml`` reads it back equal."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed (unknown names -> ValueError)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


# (field, lowest value, lowest value excluded): finite numbers, None allowed where the field is optional
_NUMBER_FIELDS = (
    ("learning_rate", 0.0, False),
    ("weight_decay", 0.0, False),
    ("adam_eps", 0.0, True),
    ("max_grad_norm", 0.0, False),
)
# fields in [0, 1)
_FRACTION_FIELDS = ("warmup_ratio", "adam_beta1", "adam_beta2")
# (field, minimum): ints, None allowed where the field is optional
_INT_FIELDS = (
    ("warmup_steps", 0),
    ("num_epochs", 1),
    ("max_steps", 1),
    ("pairs_per_step", 1),
    ("max_tokens_per_batch", 2),
    ("max_length", 1),
    ("max_prompt_length", 1),
    ("save_steps", 1),
    ("logging_steps", 1),
    ("max_bad_steps", 1),
)
_CHOICE_FIELDS = (
    ("lr_scheduler", LR_SCHEDULES),
    ("dtype", DTYPES),
    ("backend", BACKENDS),
    ("reference", REFERENCES),
)
# (field, checker): fields whose checker returns their stored form (report_to: a list of names;
# lora: a dict with every key filled in, from a mapping or a peft.LoraConfig)
_NORMALIZED_FIELDS = (("report_to", check_report_to), ("lora", check_lora))


def _check_numbers(cfg: TrainConfig) -> None:
    for name, low, low_open in _NUMBER_FIELDS:
        if getattr(cfg, name) is not None:
            check_number(f"TrainConfig: {name}", getattr(cfg, name), low, low_open=low_open)
    for name in _FRACTION_FIELDS:
        v = getattr(cfg, name)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"TrainConfig: {name} must be in [0, 1), got {v!r}")


def _check_ints(cfg: TrainConfig) -> None:
    for name, minimum in _INT_FIELDS:
        if getattr(cfg, name) is not None:
            check_int(f"TrainConfig: {name}", getattr(cfg, name), minimum)


def _check_choices(cfg: TrainConfig) -> None:
    for name, choices in _CHOICE_FIELDS:
        check_choice(f"TrainConfig: {name}", getattr(cfg, name), choices)


def _normalize(cfg: TrainConfig) -> None:
    for name, check in _NORMALIZED_FIELDS:
        setattr(cfg, name, check(f"TrainConfig: {name}", getattr(cfg, name)))


def _check_combinations(cfg: TrainConfig) -> None:
    """Rules between fields."""
    if cfg.warmup_steps and cfg.warmup_ratio:
        raise ValueError("TrainConfig: set warmup_steps or warmup_ratio, not both")
    if cfg.max_length is not None and cfg.max_prompt_length is not None and cfg.max_prompt_length >= cfg.max_length:
        raise ValueError(
            f"TrainConfig: max_prompt_length ({cfg.max_prompt_length}) must be < max_length ({cfg.max_length})"
        )
    if cfg.loss_type == "simpo" and cfg.live_reference:
        raise ValueError("TrainConfig: live_reference is meaningless with loss_type='simpo' (no reference)")
    _check_length_control(cfg)
    if cfg.reference == "sampler":
        _check_sampler_reference(cfg)


def _check_sampler_reference(cfg: TrainConfig) -> None:
    """``reference: sampler`` takes plain per-token sums from the engine: refuse what changes them."""
    why = None
    if cfg.loss_type == "simpo":
        why = "loss_type='simpo' has no reference"
    elif cfg.live_reference:
        why = "live_reference computes the reference on every micro-batch itself"
    elif cfg.ld_alpha is not None and cfg.ld_alpha != 1:
        why = "ld_alpha weights the reference's tokens, which the engine's plain sums do not"
    if why is not None:
        raise ValueError(f"TrainConfig: reference='sampler' cannot be used: {why}; use reference='recompute'")


def _check_length_control(cfg: TrainConfig) -> None:
    """LD-DPO, SamPO and WPO: values and the combinations without a meaning."""
    if cfg.ld_alpha is not None:
        check_number("TrainConfig: ld_alpha", cfg.ld_alpha, 0.0, 1.0)
    if not cfg.sampo:
        return
    if cfg.ld_alpha is not None:
        raise ValueError("TrainConfig: sampo and ld_alpha both rewrite the log-prob sums; set one of them")
    if cfg.loss_type in LENGTH_NORMALIZED:
        raise ValueError(
            f"TrainConfig: sampo with loss_type={cfg.loss_type!r}: SamPO's sums already have l_p terms on both "
            "sides; dividing them by the response lengths has no meaning"
        )
    if cfg.loss_type != "simpo" and not cfg.live_reference:
        raise ValueError(
            "TrainConfig: sampo needs live_reference=true: its positions are redrawn every epoch and the "
            "reference must sum the same ones (a reference precomputed once cannot)"
        )


_TYPE_NAMES = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str, Path), "dict[str, Any]": (dict,)}


def _check_types(cfg: TrainConfig) -> None:
    """Types before values: a string where a number belongs is named as such (``beta: "abc"``)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        ann = str(f.type)
        optional = ann.endswith(" | None")
        base = ann.removesuffix(" | None")
        if v is None and optional:
            continue
        want = _TYPE_NAMES.get(base)
        if want is None:
            continue
        ok = isinstance(v, want) and (base == "bool" or not isinstance(v, bool))
        if not ok:
            what = {
                "float": "a number",
                "int": "an int",
                "bool": "true or false",
                "str": "a string",
                "dict[str, Any]": "a mapping",
            }[base]
            raise ValueError(
                f"TrainConfig: {f.name} must be {what}{' or null' if optional else ''}, got {type(v).__name__} {v!r}"
            )
