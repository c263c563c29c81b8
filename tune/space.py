"""The tune job's YAML config (strict pydantic) and its translation into a Ray Tune search space."""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from ray import tune

from train.fit import FitConfig
from train.pipeline import to_utc

Scalar = float | int | str | bool | None
SearchAlgName = Literal["random", "grid", "optuna", "hyperopt"]

# YAML name under `spaces.<model>` -> FitConfig field. FitConfig's own constraints bound every value.
XGBOOST_PARAMS: dict[str, str] = {
    "max_depth": "xgb_max_depth",
    "learning_rate": "xgb_learning_rate",
    "n_estimators": "xgb_max_rounds",
    "subsample": "xgb_subsample",
    "colsample_bytree": "xgb_colsample_bytree",
    "min_child_weight": "xgb_min_child_weight",
    "scale_pos_weight_multiplier": "xgb_scale_pos_weight_multiplier",
    "reg_lambda": "xgb_reg_lambda",
}
LR_PARAMS: dict[str, str] = {"C": "lr_c", "class_weight": "lr_class_weight"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Range(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log ranges need low > 0")
        return self


class FloatRange(_Range):
    """A continuous range; `log: true` samples uniformly in log space."""

    type: Literal["float"]


class IntRange(_Range):
    """Integers from low to high, both included."""

    type: Literal["int"]
    low: int
    high: int


class Choice(_Strict):
    """One of the listed values, sampled uniformly."""

    type: Literal["choice"]
    values: list[Scalar] = Field(min_length=1)


class Grid(_Strict):
    """Every listed value is tried (random and grid search only)."""

    type: Literal["grid"]
    values: list[Scalar] = Field(min_length=1)


class Constant(_Strict):
    """A fixed value; written in YAML simply as `name: value`."""

    type: Literal["constant"]
    value: Scalar


AnySpec = FloatRange | IntRange | Choice | Grid | Constant
ParamSpec = Annotated[AnySpec, Field(discriminator="type")]


def _wrap_constants(value: Any) -> Any:
    """A bare scalar in YAML means "keep this value fixed"."""
    return value if isinstance(value, dict) else {"type": "constant", "value": value}


def _is_integer_field(field_name: str) -> bool:
    annotation = FitConfig.model_fields[field_name].annotation
    if get_origin(annotation) in (Union, types.UnionType):
        return int in get_args(annotation) and float not in get_args(annotation)
    return annotation is int


def _spec_values(spec: AnySpec) -> list[Scalar]:
    if isinstance(spec, FloatRange | IntRange):
        return [spec.low, spec.high]
    if isinstance(spec, Constant):
        return [spec.value]
    return list(spec.values)


def _check_against_fit_config(field_name: str, spec: AnySpec) -> None:
    """Every value the spec can produce must be a value FitConfig accepts (and of its type)."""
    if isinstance(spec, FloatRange) and _is_integer_field(field_name):
        raise ValueError("is an integer parameter: use `type: int`")
    for value in _spec_values(spec):
        if _is_integer_field(field_name) and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError(f"{value!r} is not an integer")
        try:
            FitConfig.model_validate({field_name: value})
        except ValidationError as exc:
            reason = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ValueError(f"{value!r} is not allowed: {reason}") from None


class _ModelSpace(_Strict):
    """Shared rules: a bare scalar is a constant, an omitted parameter keeps FitConfig's default, and
    every value a spec can produce is checked against FitConfig's own constraints."""

    fields_map: ClassVar[dict[str, str]] = {}

    @field_validator("*", mode="before")
    @classmethod
    def _constants(cls, value: Any) -> Any:
        return _wrap_constants(value)

    @field_validator("*", mode="after")
    @classmethod
    def _within_fit_config(cls, spec: Any, info: ValidationInfo) -> Any:
        if info.field_name is not None:
            _check_against_fit_config(cls.fields_map[info.field_name], spec)
        return spec

    def as_fit_fields(self) -> dict[str, AnySpec]:
        specs = {self.fields_map[name]: getattr(self, name) for name in type(self).model_fields}
        return {name: spec for name, spec in specs.items() if spec is not None}


class XGBoostSpace(_ModelSpace):
    """XGBoost knobs; n_estimators is an upper bound, early stopping on validation PR-AUC cuts it short."""

    fields_map: ClassVar[dict[str, str]] = XGBOOST_PARAMS
    max_depth: ParamSpec | None = None
    learning_rate: ParamSpec | None = None
    n_estimators: ParamSpec | None = None
    subsample: ParamSpec | None = None
    colsample_bytree: ParamSpec | None = None
    min_child_weight: ParamSpec | None = None
    scale_pos_weight_multiplier: ParamSpec | None = None
    reg_lambda: ParamSpec | None = None


class LRSpace(_ModelSpace):
    """Logistic regression knobs: inverse regularisation C and the class weight ('balanced', null, w)."""

    fields_map: ClassVar[dict[str, str]] = LR_PARAMS
    C: ParamSpec | None = None
    class_weight: ParamSpec | None = None


class Spaces(_Strict):
    xgboost: XGBoostSpace = XGBoostSpace()
    lr: LRSpace = LRSpace()

    def as_fit_fields(self) -> dict[str, AnySpec]:
        return {**self.xgboost.as_fit_fields(), **self.lr.as_fit_fields()}

    def by_yaml_name(self) -> dict[str, AnySpec]:
        """'spaces.xgboost.max_depth' -> spec, for messages that point into the YAML."""
        named = {f"spaces.{m}.{k}": v for m in ("xgboost", "lr") for k, v in getattr(self, m)}
        return {name: spec for name, spec in named.items() if spec is not None}


class SchedulerConfig(_Strict):
    """ASHA over boosting rounds: trials are compared every grace_period * reduction_factor^k rounds."""

    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(50, ge=1, description="Rounds every trial gets before it can be stopped")
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int = Field(1000, ge=1, description="Top of the rung ladder, in rounds (set it to n_estimators)")

    @model_validator(mode="after")
    def _grace_within_max(self) -> Self:
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must not exceed max_t ({self.max_t})")
        return self


class SearchAlgConfig(_Strict):
    name: SearchAlgName = "random"
    seed: int | None = 7
    start_from_defaults: bool = Field(True, description="First trial = FitConfig defaults (the baseline)")


class PromotionConfig(_Strict):
    enabled: bool = True
    margin: float = Field(0.005, ge=0, le=1, description="PR-AUC gain the challenger must show")
    holdout_days: float | None = Field(
        None, gt=0, description="Latest days to compare on; null: all days after both training windows"
    )


class TuneJobConfig(_Strict):
    """One search: data, budget, resources, scheduler, search algorithm, spaces and promotion rule."""

    experiment_name: str = Field("fraud-scorer-tune", min_length=1)
    data: Path | None = Field(None, description="CSV/Parquet; unset: the generated default data set")
    num_samples: int = Field(16, ge=1)
    max_concurrent: int | None = Field(None, ge=1, description="Unset: as many trials as the CPUs hold")
    cpus_per_trial: float | Literal["auto"] = "auto"
    train_from: str | None = Field(None, description="As `python -m train --train-from`; null: the first day")
    train_until: str | None = Field(
        None, description="As `python -m train --train-until`; null: the last 20 % of days are held out"
    )
    label_delay_days: float | None = Field(None, ge=0, description="null: FRAUD_LABEL_DELAY_DAYS")
    report_every: int = Field(10, ge=1, description="Boosting rounds between two reports to Tune")
    early_stopping_rounds: int = Field(40, ge=1)
    seed: int = 0
    time_budget_s: float | None = Field(None, gt=0, description="Wall-clock limit of the search")
    scheduler: SchedulerConfig = SchedulerConfig()
    search_alg: SearchAlgConfig = SearchAlgConfig()
    spaces: Spaces = Spaces()
    promotion: PromotionConfig = PromotionConfig()

    @field_validator("train_from", "train_until", mode="before")
    @classmethod
    def _a_time(cls, value: Any) -> Any:
        if value is None:
            return None
        # YAML reads an unquoted 2026-02-20 as a date; keep it as the text `python -m train` would get.
        text = value.isoformat() if isinstance(value, date | datetime) else value
        if not isinstance(text, str):
            raise ValueError(f"must be a date or RFC 3339 time, got {value!r}")
        try:
            to_utc(text)
        except ValueError:
            raise ValueError(f"must be a date or RFC 3339 time, got {value!r}") from None
        return text

    @field_validator("cpus_per_trial", mode="before")
    @classmethod
    def _auto_or_positive(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1024:
            raise ValueError(f"must be 'auto' or a positive number of CPUs, got {value!r}")
        return float(value)

    @model_validator(mode="after")
    def _fits_search_alg(self) -> Self:
        specs = self.spaces.by_yaml_name()
        name = self.search_alg.name
        grids = [key for key, spec in specs.items() if isinstance(spec, Grid)]
        if grids and name in ("optuna", "hyperopt"):
            raise ValueError(f"search_alg.name {name!r} cannot use `type: grid` (found in {grids})")
        sampled = [key for key, spec in specs.items() if not isinstance(spec, Grid | Constant)]
        if name == "grid" and sampled:
            raise ValueError(
                f"search_alg.name 'grid' needs `type: grid` or constants only; sampled: {sampled}"
            )
        return self


@dataclass(frozen=True)
class ResourcePlan:
    """How a search occupies the cluster: CPUs reserved per trial, trials at once, XGBoost threads."""

    cpus_per_trial: float
    max_concurrent: int
    nthread: int


def plan_resources(config: TuneJobConfig, cluster_cpus: float) -> ResourcePlan:
    """Resolve `auto`: the concurrent trials share the whole cluster (1 CPU each on 2 cores, several
    each on a big node); an explicit (possibly fractional) reservation runs as many trials as fit."""
    if cluster_cpus <= 0:
        raise ValueError(f"the Ray cluster has no CPUs ({cluster_cpus})")
    if config.cpus_per_trial == "auto":
        concurrent = min(config.num_samples, config.max_concurrent or max(1, int(cluster_cpus)))
        share = cluster_cpus / concurrent
        # Whole CPUs when there are enough; a fraction (Ray accepts 0.01 steps) when trials outnumber CPUs.
        cpus = float(math.floor(share)) if share >= 1 else math.floor(share * 100) / 100
    else:
        cpus = float(config.cpus_per_trial)
        fits = max(1, int(cluster_cpus // cpus))
        concurrent = min(config.num_samples, config.max_concurrent or fits)
    # Threads beyond the reservation would steal CPU from the neighbouring trials.
    return ResourcePlan(cpus_per_trial=cpus, max_concurrent=concurrent, nthread=max(1, int(cpus)))


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid tune config {source}:"]
    for error in exc.errors():
        # Discriminated unions add the tag ('float', 'int', ...) to the location; it names no field.
        loc = [str(p) for p in error["loc"] if p not in ("float", "int", "choice", "grid", "constant")]
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"  {'.'.join(loc)}: {message}" if loc else f"  {message}")
    return "\n".join(lines)


class ConfigError(ValueError):
    """A tune config that cannot run; the message names the field."""


def parse_config(raw: Any, source: str = "<dict>") -> TuneJobConfig:
    """Validate an already-parsed YAML document."""
    try:
        return TuneJobConfig.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def load_config(path: Path) -> TuneJobConfig:
    """Read and validate a YAML job config; ConfigError names the offending field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read tune config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"tune config {path} is not valid YAML: {exc}") from None
    return parse_config(raw, str(path))


def _to_tune(spec: AnySpec) -> Any:
    if isinstance(spec, FloatRange):
        return tune.loguniform(spec.low, spec.high) if spec.log else tune.uniform(spec.low, spec.high)
    if isinstance(spec, IntRange):  # Tune's integer upper bounds are exclusive, the YAML's inclusive
        return tune.lograndint(spec.low, spec.high + 1) if spec.log else tune.randint(spec.low, spec.high + 1)
    if isinstance(spec, Choice):
        return tune.choice(spec.values)
    if isinstance(spec, Grid):
        return tune.grid_search(spec.values)
    return spec.value


def param_space(spaces: Spaces) -> dict[str, Any]:
    """The Tune param_space: FitConfig field name -> Tune domain, grid or constant."""
    return {name: _to_tune(spec) for name, spec in spaces.as_fit_fields().items()}


def default_point(spaces: Spaces) -> dict[str, Any]:
    """FitConfig's defaults for every sampled parameter (the baseline trial), clipped into the space."""
    defaults = FitConfig()
    point: dict[str, Any] = {}
    for name, spec in spaces.as_fit_fields().items():
        value = getattr(defaults, name)
        if isinstance(spec, FloatRange | IntRange):
            point[name] = min(max(value, spec.low), spec.high)
        elif isinstance(spec, Choice | Grid):
            point[name] = value if value in spec.values else spec.values[0]
    return point
