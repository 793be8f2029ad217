"""One distillation job = one config file (TOML or YAML) parsed into typed, validated objects.

Every stage (dedupe, embed, train, sweep, export) reads the same :class:`DistillConfig`, so a run is
reproducible from its file alone. Validation is strict on purpose: an unknown key is almost always a
typo that would otherwise silently fall back to a default, so it is rejected naming the dotted key.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AnchorConfig",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "EvalSetConfig",
    "LossConfig",
    "OptimConfig",
    "OutputConfig",
    "RunConfig",
    "StudentConfig",
    "SweepConfig",
    "TeacherConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "parse_override_value",
]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and each offending dotted key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Field(gt=0)


class TeacherConfig(_Strict):
    name: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)
    per_residue: bool = False  # also cache per-residue states and train a residue projection on them
    options: dict[str, Any] = Field(default_factory=dict)  # passed to registry.load_teacher(name, **options)
    # Padded residues per call into this teacher while filling its cache (default run.embed_batch_tokens,
    # else the teacher's own `call_tokens`). Teachers want different batches on a CPU: UniRep-1900's
    # recurrent products run 2.7x faster at 262k than at 8k, NEAR's convolutions 3.7x slower
    # (reports/distill/cpu_line.md), so each teacher's loader knows its own.
    embed_batch_tokens: int | None = Field(default=None, gt=0)


class EvalSetConfig(_Strict):
    """Evaluation sequences the training corpus must not resemble: a TSV with a ``sequence`` column,
    or a folder (every ``*.tsv`` in it). ``where`` keeps only rows whose columns equal the values."""

    path: Path
    where: dict[str, str] = Field(default_factory=dict)


class DataConfig(_Strict):
    corpus: Path
    eval: list[EvalSetConfig] = Field(default_factory=list)
    identity_threshold: float = Field(default=0.5, gt=0, le=1)
    # A hit counts when the alignment covers at least this fraction of EITHER sequence: a corpus
    # sequence that contains most of an eval protein leaks it just as much as a fragment of one does.
    coverage: float = Field(default=0.5, gt=0, le=1)
    min_length: int = Field(default=20, gt=0)
    max_sequences: int = Field(default=0, ge=0)  # 0 = all that survive the overlap filter
    max_length: int = Field(default=1024, gt=0)  # crop (N-terminal) applied before teachers and student
    validation_fraction: float = Field(default=0.05, gt=0, lt=1)
    sources: list[str] = Field(default_factory=list)  # keep only these header source tags; [] = all
    # How often each training row is drawn per epoch, by its header source tag (unnamed sources: 1).
    # 2 = twice every epoch; 0.5 = a different half every epoch, so that added data (UniProt, say) can
    # join without diluting the corpus's own sources' share of the steps (reports/distill/cpu_mix.md).
    # Validation is not weighted. Only training batches change; teacher targets are per sequence.
    source_weights: dict[str, float] = Field(default_factory=dict)
    seed: int = 7

    @field_validator("source_weights")
    @classmethod
    def _positive_weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not w > 0}
        if bad:
            raise ValueError(
                f"weights must be > 0 (to leave a source out, use data.sources); not {', '.join(bad)}"
            )
        return v


class ResidueAdapterConfig(_Strict):
    """The per-residue head behind the ``residues`` output (see ``student.model.ResidueAdapter``)."""

    width: int = Field(default=256, gt=0)  # the ``residues`` output's width
    kernel: int = Field(default=9, gt=0)  # residues each convolution sees (odd: centred on the residue)
    embed: int = Field(default=32, gt=0)  # width of the adapter's own residue-identity embedding
    # One residual convolution per entry, with that dilation: [1] is the 1.3.0 head (two convolutions
    # in all); [1, 2, 4] reaches +-32 residues with kernel 9 at the cost of two more convolutions.
    residual_dilations: list[int] = Field(default_factory=lambda: [1], min_length=1)

    @model_validator(mode="after")
    def _odd_kernel(self) -> ResidueAdapterConfig:
        if self.kernel % 2 == 0:
            raise ValueError(f"residue_adapter.kernel ({self.kernel}) must be odd, to centre on the residue")
        if any(d < 1 for d in self.residual_dilations):
            raise ValueError(f"residue_adapter.residual_dilations {self.residual_dilations} must be >= 1")
        return self


class StudentConfig(_Strict):
    layers: int = PositiveInt
    d_model: int = PositiveInt
    heads: int = PositiveInt
    ffn: int = PositiveInt
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=1024, gt=0)
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    # Width of a per-residue GELU projection applied *before* mean pooling; 0 = pool the residue states
    # directly. Teachers such as UniRep average wide nonlinear residue states (h_avg over 1900 units); a
    # mean of d_model states followed by a linear head can only reach a d_model-rank slice of that, while
    # a mean of wider nonlinear features can follow it. Its output is the student's own embedding.
    pool_dim: int = Field(default=0, ge=0)
    # A per-residue head for the ``residues`` output, trained after the trunk with the trunk frozen
    # (``protembed_distill.train.residue_adapter``); None: ``residues`` are the trunk's final states.
    residue_adapter: ResidueAdapterConfig | None = None

    @model_validator(mode="after")
    def _heads_divide(self) -> StudentConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


class OptimConfig(_Strict):
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    epochs: int = Field(default=10, gt=0)
    max_steps: int = Field(default=0, ge=0)  # 0 = epochs decide
    batch_tokens: int = Field(default=8192, gt=0)  # padded tokens (batch x longest) per step
    grad_clip: float = Field(default=1.0, ge=0)  # 0 = off
    patience: int = Field(default=3, ge=0)  # epochs without val improvement before stopping; 0 = off
    checkpoint_every_steps: int = Field(default=0, ge=0)  # 0 = only at epoch ends
    log_every_steps: int = Field(default=20, gt=0)
    amp: bool = True  # bf16 autocast, used on CUDA only
    # bf16 autocast on a CPU with bfloat16 matrix units (Intel AMX / AVX512-BF16; ignored, with a log
    # line, elsewhere): 1.7x the float32 training rate of the bundled student on one such core
    # (reports/distill/cpu_amx.md). Off by default: a CPU run's numbers would then depend on the CPU model.
    cpu_amp: bool = False
    time_budget_s: float = Field(default=0, ge=0)  # stop cleanly (checkpointed) after this; 0 = none
    # Start from these weights (a best.pt / last.pt of the same student and teachers, or an exported
    # model folder such as models/protembed-student-v1) with a fresh optimizer and schedule: a second
    # warm-restart cycle continues a run that its budget cut short, also on another machine.
    init_from: Path | None = None


class LossConfig(_Strict):
    cosine: float = Field(default=1.0, ge=0)
    mse: float = Field(default=1.0, ge=0)
    kl: float = Field(default=0.0, ge=0)  # MTDP's KL between softmax(teacher/T) and softmax(student/T)
    kl_temperature: float = Field(default=1.0, gt=0)
    per_residue: float = Field(default=0.5, ge=0)  # weight of the residue loss for per_residue teachers
    # 1 - cosine in the teacher's original units (the figure a drop-in for the teacher's vectors is
    # judged by, which the standardized terms weight differently); off by default
    raw_cosine: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _some_term(self) -> LossConfig:
        if self.cosine == 0 and self.mse == 0 and self.kl == 0 and self.raw_cosine == 0:
            raise ValueError("at least one of cosine, mse, kl, raw_cosine must be > 0")
        return self


class AnchorConfig(_Strict):
    """Self-distillation against drift: keep the student's pooled vector near a frozen earlier student's
    (e.g. the bundled model) on the training sequences, so that a continuation changes what the teachers
    ask for and little else. Continuations on the teachers' targets alone raised the held-out cosine but
    cost the capsid and deepsol probes ~2% (reports/distill/cpu_mix.md, cpu_line.md); the teacher-space
    cosine barely weighs the directions those probes use."""

    model: Path | None = None  # model folder or checkpoint of the same [student]
    weight: float = Field(default=0.0, ge=0)  # beside the teachers' weights, which sum to 1; 0 = off
    # The same for every residue's trunk state (what the per-residue head reads): the pooled term alone
    # lets them move (0.7% of their variance over the line's link 2, too little for the head to feel;
    # the 0.5% Q3 session 31 blamed on it was the head's seed: cpu_line.md, session 32). The term is the
    # share of the anchor's state variance not kept, so 1 = no better than a constant. Costs the frozen
    # model's forward pass on every batch (no backward pass).
    residue_weight: float = Field(default=0.0, ge=0)

    @property
    def on(self) -> bool:
        return self.weight > 0 or self.residue_weight > 0

    @model_validator(mode="after")
    def _model_when_on(self) -> AnchorConfig:
        for name in ("weight", "residue_weight"):
            if getattr(self, name) > 0 and self.model is None:
                raise ValueError(f"anchor.{name} > 0 needs anchor.model (a model folder or checkpoint)")
        return self


class SweepConfig(_Strict):
    sizes: list[StudentConfig] = Field(default_factory=list)
    steps: int = Field(default=200, gt=0)
    time_budget_s: float = Field(default=0, ge=0)  # per size; 0 = steps decide


class RunConfig(_Strict):
    dir: Path = Path("runs/default")  # checkpoints, logs, dedupe cache, sweep report
    seed: int = 7
    threads: int = Field(
        default=0, ge=0
    )  # torch / ORT intra-op threads; 0 = $PROTEMBED_THREADS or torch default
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # One padded-token budget per call for every teacher while caches fill; unset: each teacher's own
    embed_batch_tokens: int | None = Field(default=None, gt=0)


class OutputConfig(_Strict):
    model_id: str = Field(default="protembed-student-v1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = "1.0.0"
    model_dir: Path = Path("models/protembed-student-v1")
    # Teacher embeddings live outside the repository so a later session resumes instead of recomputing.
    teacher_cache_dir: Path = Path("~/.cache/protembed/teacher-cache")
    int8: bool = True
    fp16: bool = True


class DistillConfig(_Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    teachers: list[TeacherConfig] = Field(min_length=1)
    data: DataConfig
    student: StudentConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    anchor: AnchorConfig = Field(default_factory=AnchorConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("teachers")
    @classmethod
    def _unique_teachers(cls, teachers: list[TeacherConfig]) -> list[TeacherConfig]:
        names = [t.name for t in teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"teacher names must be unique, repeated: {', '.join(dupes)}")
        return teachers

    @model_validator(mode="after")
    def _crop_fits_student(self) -> DistillConfig:
        if self.data.max_length > self.student.max_length:
            raise ValueError(
                f"data.max_length ({self.data.max_length}) exceeds student.max_length "
                f"({self.student.max_length}); the student could not read its own training crops"
            )
        return self

    def threads(self) -> int:
        """Intra-op threads: the config, else ``$PROTEMBED_THREADS``, else 0 (library default)."""
        if self.run.threads:
            return self.run.threads
        env = os.environ.get("PROTEMBED_THREADS", "")
        return int(env) if env.isdigit() else 0

    def teacher_cache_dir(self) -> Path:
        return self.output.teacher_cache_dir.expanduser()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}, got {e.get('input')!r}")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def parse_config(raw: Mapping[str, Any], source: str = "<dict>") -> DistillConfig:
    """Validate a parsed mapping. Relative paths stay relative to the working directory (the
    repository root when launched as documented), so one file works from any checkout location."""
    try:
        return DistillConfig.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def parse_override_value(text: str) -> Any:
    """A TOML value (``1e-3``, ``true``, ``"cuda"``, ``[1, 2]``); anything TOML cannot read is a string,
    so ``run.device=cuda`` needs no quotes."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: Mapping[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """``["optim.lr=2e-3", "student.pool_dim=1024"]`` applied to a parsed config mapping (a copy).

    One file then serves several runs (a GPU box, a sweep of candidates run side by side) without
    copies that drift apart; validation afterwards names a mistyped key like any other."""
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"{source} {item!r}: expected dotted.key=value")
        node: Any = out
        for i, part in enumerate(parts):
            where = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            if isinstance(node, list):  # teachers.0.options.device: a number indexes an array of tables
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{source} {item!r}: {where}: no such entry ({len(node)} in the array)")
                if last:
                    node[int(part)] = parse_override_value(value.strip())
                else:
                    node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"{source} {item!r}: {'.'.join(parts[:i])} is not a table")
            if last:
                node[part] = parse_override_value(value.strip())
            else:
                node = node.setdefault(part, {})
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """Read and validate a ``.toml`` / ``.yaml`` / ``.yml`` file, with optional ``key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            raw: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raise ConfigError(f"config {path}: unsupported extension {suffix!r} (use .toml, .yaml or .yml)")
    except (tomllib.TOMLDecodeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"config {path}: cannot parse: {err}") from None
    except Exception as err:  # yaml.YAMLError without importing yaml at module level
        raise ConfigError(f"config {path}: cannot parse: {err}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(raw).__name__}")
    if overrides:
        return parse_config(apply_overrides(raw, overrides), f"{path} (with --set {' '.join(overrides)})")
    return parse_config(raw, str(path))
