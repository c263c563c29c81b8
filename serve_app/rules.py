"""Business rules: structured conditions over features and request fields, and the RuleEngine deployment.

A rule file is data, never code: each rule is a tree of `{field, op, value}` conditions joined by `all` /
`any`, validated with pydantic when it is loaded (a bad file fails with the rule's name and the field's
path), then evaluated column-wise over a whole batch with numpy.

Semantics:
- A condition on a missing value (no coordinates, no channel, a NaN feature) is false, whatever the op,
  so `!=` and `not_in` never fire on data the client did not send.
- Among the rules that match a transaction, the one with the highest priority decides; on a tie the more
  severe action wins (decline > review > approve). `scoring.final_decision` says how that action meets
  the model's decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    model_validator,
)
from ray import serve

from serve_app import metrics
from serve_app.features.contract import FEATURE_NAMES
from serve_app.schemas import Decision

# Fields a rule can test. Numeric ones are model features plus the serving flag `degraded`;
# text ones are request fields that are not model features.
NUMERIC_FIELDS: tuple[str, ...] = (*FEATURE_NAMES, "degraded")
TEXT_FIELDS: tuple[str, ...] = ("channel", "merchant_category", "currency", "merchant_id", "customer_id")
RULE_FIELDS: tuple[str, ...] = (*NUMERIC_FIELDS, *TEXT_FIELDS)

SEVERITY: dict[str, int] = {"approve": 0, "review": 1, "decline": 2}
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"]
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
BoolArray = npt.NDArray[np.bool_]


class RuleFileError(ValueError):
    """A rule file or rule set that cannot be used; the message names the rule and the field."""


class Condition(BaseModel):
    """One test: `{field: amount, op: ">=", value: 10000}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    op: Op
    value: Scalar | list[Scalar]

    @model_validator(mode="after")
    def _field_op_and_value_agree(self) -> Condition:
        if self.field not in RULE_FIELDS:
            raise ValueError(f"unknown field {self.field!r}; known fields: {', '.join(RULE_FIELDS)}")
        is_list = isinstance(self.value, list)
        if self.op in ("in", "not_in"):
            if not is_list or not self.value:
                raise ValueError(f"op {self.op!r} needs a non-empty list as value")
        elif is_list:
            raise ValueError(f"op {self.op!r} needs a single value, not a list")
        values = self.value if isinstance(self.value, list) else [self.value]
        if self.field in TEXT_FIELDS:
            if self.op not in ("==", "!=", "in", "not_in"):
                raise ValueError(f"field {self.field!r} is text: only ==, !=, in, not_in apply")
            if not all(isinstance(v, str) for v in values):
                raise ValueError(f"field {self.field!r} is text: values must be strings")
        elif not all(isinstance(v, int | float) for v in values):
            # bool is an int, so `degraded == true` is accepted and means 1.
            raise ValueError(f"field {self.field!r} is numeric: values must be numbers or booleans")
        return self


class AllOf(BaseModel):
    """True when every child is true."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: list[Node] = Field(min_length=1)


class AnyOf(BaseModel):
    """True when at least one child is true."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    any: list[Node] = Field(min_length=1)


def _node_kind(raw: Any) -> str:
    """Pick the node type by its key so that errors point into one branch, not into all three."""
    keys = raw.keys() if isinstance(raw, dict) else vars(raw).keys() if isinstance(raw, BaseModel) else ()
    if "all" in keys:
        return "all"
    if "any" in keys:
        return "any"
    return "condition"


Node = Annotated[
    Annotated[Condition, Tag("condition")] | Annotated[AllOf, Tag("all")] | Annotated[AnyOf, Tag("any")],
    Discriminator(_node_kind),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()


class Rule(BaseModel):
    """A named condition tree with the action it asks for and its priority."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    description: str = Field(min_length=1, max_length=300)
    action: Decision
    priority: int = Field(ge=0, le=1000)
    when: Node
    enabled: bool = True


@dataclass(frozen=True)
class RuleOutcome:
    """What the rules say about one transaction: every rule that fired, and the deciding action."""

    hits: tuple[str, ...]
    action: Decision | None
    deciding_rule: str | None


def _as_number(value: Scalar) -> float:
    return float(value)  # bools become 0/1


def _numeric_mask(column: npt.NDArray[np.float64], cond: Condition) -> BoolArray:
    present = ~np.isnan(column)
    with np.errstate(invalid="ignore"):
        if cond.op in ("in", "not_in"):
            targets = np.asarray([_as_number(v) for v in cond.value], dtype=np.float64)  # type: ignore[union-attr]
            found = np.isin(column, targets)
            result = found if cond.op == "in" else ~found
        else:
            target = _as_number(cond.value)  # type: ignore[arg-type]
            result = {
                "==": column == target,
                "!=": column != target,
                "<": column < target,
                "<=": column <= target,
                ">": column > target,
                ">=": column >= target,
            }[cond.op]
    return np.asarray(result & present, dtype=bool)


def _text_mask(column: Sequence[str | None], cond: Condition) -> BoolArray:
    targets = set(cond.value) if isinstance(cond.value, list) else {cond.value}
    negate = cond.op in ("!=", "not_in")
    return np.fromiter(
        (bool(v) and ((v in targets) != negate) for v in column), dtype=bool, count=len(column)
    )


def _path(loc: tuple[int | str, ...]) -> str:
    """`when.all.0.amount`-style path, without the union tags pydantic inserts (`all.all`, `condition`)."""
    parts = [
        str(p) for i, p in enumerate(loc) if p != "condition" and not (i + 1 < len(loc) and loc[i + 1] == p)
    ]
    return ".".join(parts) or "(rule)"


class RuleSet:
    """A validated, ordered set of rules, evaluated over a batch at once."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RuleFileError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        # Highest priority first, then most severe: the first matching rule in this order decides.
        self.rules: tuple[Rule, ...] = tuple(
            sorted((r for r in rules if r.enabled), key=lambda r: (-r.priority, -SEVERITY[r.action], r.name))
        )

    @classmethod
    def from_config(cls, data: Any) -> RuleSet:
        """Validate a parsed rule document: `{"rules": [ {...}, ... ]}`."""
        if not isinstance(data, Mapping) or set(data) != {"rules"} or not isinstance(data["rules"], list):
            raise RuleFileError("a rule document is a mapping with exactly one key, 'rules', holding a list")
        rules = []
        for index, raw in enumerate(data["rules"]):
            label = f"rules[{index}]"
            if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
                label = f"rule {raw['name']!r} ({label})"
            try:
                rules.append(Rule.model_validate(raw))
            except ValidationError as exc:
                problems = "; ".join(f"{_path(err['loc'])}: {err['msg']}" for err in exc.errors())
                raise RuleFileError(f"{label}: {problems}") from None
        return cls(rules)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RuleSet:
        """Load and validate a YAML rule file (safe_load: data only)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RuleFileError(f"cannot read rule file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise RuleFileError(f"rule file {path} is not valid YAML: {exc}") from None
        try:
            return cls.from_config(data)
        except RuleFileError as exc:
            raise RuleFileError(f"{path}: {exc}") from None

    def to_config(self) -> dict[str, list[dict[str, Any]]]:
        """The JSON-able document `from_config` reads (enabled rules only)."""
        return {"rules": [r.model_dump(mode="json") for r in self.rules]}

    def _mask(self, node: Condition | AllOf | AnyOf, context: Mapping[str, Any], n: int) -> BoolArray:
        if isinstance(node, AllOf):
            mask = np.ones(n, dtype=bool)
            for child in node.all:
                mask &= self._mask(child, context, n)
            return mask
        if isinstance(node, AnyOf):
            mask = np.zeros(n, dtype=bool)
            for child in node.any:
                mask |= self._mask(child, context, n)
            return mask
        column = context[node.field]
        if node.field in TEXT_FIELDS:
            return _text_mask(column, node)
        return _numeric_mask(np.asarray(column, dtype=np.float64), node)

    def evaluate(self, context: Mapping[str, Any]) -> list[RuleOutcome]:
        """One outcome per row; `context` maps every RULE_FIELDS name to a column (see `rule_context`)."""
        missing = [f for f in RULE_FIELDS if f not in context]
        if missing:
            raise KeyError(f"rule context lacks fields: {missing}")
        n = len(context["amount"])
        masks = [self._mask(rule.when, context, n) for rule in self.rules]
        outcomes = []
        for row in range(n):
            fired = [rule for rule, mask in zip(self.rules, masks, strict=True) if mask[row]]
            first = fired[0] if fired else None
            outcomes.append(
                RuleOutcome(
                    hits=tuple(r.name for r in fired),
                    action=first.action if first else None,
                    deciding_rule=first.name if first else None,
                )
            )
        return outcomes


def rule_context(
    features: npt.NDArray[np.float64],
    degraded: Sequence[bool] | npt.NDArray[np.bool_],
    text: Mapping[str, Sequence[str | None]],
) -> dict[str, Any]:
    """Columns by field name from the feature matrix (contract order), degraded flags and text fields."""
    if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"features must be (n, {len(FEATURE_NAMES)}), got {features.shape}")
    context: dict[str, Any] = {name: features[:, i] for i, name in enumerate(FEATURE_NAMES)}
    context["degraded"] = np.asarray(degraded, dtype=np.float64)
    for name in TEXT_FIELDS:
        column = list(text.get(name, [None] * features.shape[0]))
        if len(column) != features.shape[0]:
            raise ValueError(f"text field {name!r} has {len(column)} rows, features have {features.shape[0]}")
        context[name] = column
    return context


class RulesUserConfig(BaseModel):
    """The RuleEngine's user_config: the rule document itself, replaceable at run time."""

    model_config = ConfigDict(extra="forbid")

    rules: list[dict[str, Any]]


@serve.deployment
class RuleEngine:
    """Evaluates the current rule set over a batch; `reconfigure` swaps rules without a restart."""

    def __init__(self) -> None:
        self.rule_set: RuleSet | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = RulesUserConfig.model_validate(user_config)
        # Validate completely before swapping, so a bad update leaves the old rules in force.
        self.rule_set = RuleSet.from_config({"rules": config.rules})

    def evaluate(
        self,
        features: npt.NDArray[np.float64],
        degraded: npt.NDArray[np.bool_],
        text: dict[str, list[str | None]],
    ) -> list[RuleOutcome]:
        if self.rule_set is None:
            raise RuntimeError("RuleEngine has no rules: its user_config must carry {'rules': [...]}")
        metrics.observe_batch_size("RuleEngine", features.shape[0])
        return self.rule_set.evaluate(rule_context(features, degraded, text))

    def check_health(self) -> None:
        if self.rule_set is None:
            raise RuntimeError("no rules loaded")
