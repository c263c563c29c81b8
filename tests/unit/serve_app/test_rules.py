"""RuleSet: validation of rule documents and column-wise evaluation over a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.features.contract import FEATURE_NAMES
from serve_app.rules import RULE_FIELDS, RuleFileError, RuleSet, rule_context

REPO = Path(__file__).resolve().parents[3]


def _features(rows: list[dict[str, float]]) -> np.ndarray:
    """A feature matrix in contract order: given values, everything else 0."""
    x = np.zeros((len(rows), len(FEATURE_NAMES)))
    for i, row in enumerate(rows):
        for name, value in row.items():
            x[i, FEATURE_NAMES.index(name)] = value
    return x


def _context(rows: list[dict[str, Any]], degraded: list[bool] | None = None) -> dict[str, Any]:
    numeric = [{k: v for k, v in r.items() if k in FEATURE_NAMES} for r in rows]
    text = {f: [r.get(f) for r in rows] for f in ("channel", "merchant_category", "merchant_id")}
    return rule_context(_features(numeric), degraded or [False] * len(rows), text)


def _rule(name: str, action: str, priority: int, when: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"test rule {name}",
        "action": action,
        "priority": priority,
        "when": when,
    }


def test_shipped_rule_file_loads_and_uses_known_fields() -> None:
    rules = RuleSet.from_yaml(REPO / "configs" / "rules.yaml")
    assert len(rules.rules) >= 5
    assert {r.action for r in rules.rules} == {"approve", "review", "decline"}


def test_shipped_card_testing_rule_declines_a_burst_of_tiny_payments() -> None:
    rules = RuleSet.from_yaml(REPO / "configs" / "rules.yaml")
    burst = {"amount": 1.0, "cust_count_1h": 12.0, "channel_online": 1.0}
    calm = {"amount": 1.0, "cust_count_1h": 2.0}
    big_burst = {"amount": 80.0, "cust_count_1h": 12.0}
    out = rules.evaluate(_context([burst, calm, big_burst]))
    assert out[0].action == "decline"
    assert "card_testing_burst" in out[0].hits
    assert "card_testing_burst" not in out[1].hits
    assert "card_testing_burst" not in out[2].hits


def test_shipped_rules_review_degraded_large_payments_only_when_degraded() -> None:
    rules = RuleSet.from_yaml(REPO / "configs" / "rules.yaml")
    rows = [{"amount": 2500.0}, {"amount": 2500.0}]
    out = rules.evaluate(_context(rows, degraded=[True, False]))
    assert out[0].hits == ("degraded_high_amount",)
    assert out[0].action == "review"
    assert out[1].hits == ()
    assert out[1].action is None


def test_highest_priority_decides_and_every_hit_is_listed() -> None:
    doc = {
        "rules": [
            _rule("big", "review", 10, {"field": "amount", "op": ">=", "value": 100}),
            _rule("vip", "approve", 50, {"field": "merchant_id", "op": "==", "value": "M1"}),
            _rule("fast", "decline", 30, {"field": "geo_speed_kmh", "op": ">", "value": 900}),
        ]
    }
    rules = RuleSet.from_config(doc)
    out = rules.evaluate(
        _context(
            [
                {"amount": 500.0, "merchant_id": "M1", "geo_speed_kmh": 1000.0},
                {"amount": 500.0, "merchant_id": "M2", "geo_speed_kmh": 1000.0},
                {"amount": 50.0, "merchant_id": "M2"},
            ]
        )
    )
    assert out[0].hits == ("vip", "fast", "big")
    assert (out[0].action, out[0].deciding_rule) == ("approve", "vip")
    assert (out[1].action, out[1].deciding_rule) == ("decline", "fast")
    assert out[2].action is None


def test_equal_priority_goes_to_the_more_severe_action() -> None:
    doc = {
        "rules": [
            _rule("a_ok", "approve", 5, {"field": "amount", "op": ">", "value": 1}),
            _rule("b_no", "decline", 5, {"field": "amount", "op": ">", "value": 1}),
        ]
    }
    assert RuleSet.from_config(doc).evaluate(_context([{"amount": 3.0}]))[0].action == "decline"


def test_all_any_combinators_and_list_ops() -> None:
    when = {
        "all": [
            {"field": "channel", "op": "in", "value": ["online", "atm"]},
            {
                "any": [
                    {"field": "amount", "op": ">=", "value": 1000},
                    {"field": "merchant_category", "op": "not_in", "value": ["grocery", "cafe"]},
                ]
            },
        ]
    }
    rules = RuleSet.from_config({"rules": [_rule("combo", "review", 1, when)]})
    rows = [
        {"channel": "online", "amount": 2000.0, "merchant_category": "grocery"},  # all, any via amount
        {"channel": "online", "amount": 20.0, "merchant_category": "jewelry"},  # any via category
        {"channel": "online", "amount": 20.0, "merchant_category": "grocery"},  # any fails
        {"channel": "pos", "amount": 2000.0, "merchant_category": "jewelry"},  # channel fails
        {"channel": "online", "amount": 20.0},  # category missing: not_in is false
    ]
    assert [bool(o.hits) for o in rules.evaluate(_context(rows))] == [True, True, False, False, False]


def test_conditions_on_missing_values_are_false() -> None:
    doc = {
        "rules": [
            _rule("not_pos", "review", 1, {"field": "channel", "op": "!=", "value": "pos"}),
            _rule("far", "review", 1, {"field": "geo_distance_km", "op": "!=", "value": 0}),
        ]
    }
    x = _features([{"geo_distance_km": 0.0}])
    x[0, FEATURE_NAMES.index("geo_distance_km")] = np.nan
    context = rule_context(x, [False], {"channel": [None]})
    assert RuleSet.from_config(doc).evaluate(context)[0].hits == ()


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            _rule("typo", "review", 1, {"field": "amout", "op": ">", "value": 1}),
            "rule 'typo'.*unknown field 'amout'",
        ),
        (
            _rule("badop", "review", 1, {"field": "amount", "op": "~=", "value": 1}),
            "rule 'badop'.*when.op: Input should be",
        ),
        (
            _rule("txt", "review", 1, {"field": "channel", "op": ">", "value": "a"}),
            "rule 'txt'.*channel.*is text",
        ),
        (
            _rule("num", "review", 1, {"field": "amount", "op": ">", "value": "big"}),
            "rule 'num'.*amount.*numeric",
        ),
        (
            _rule("lst", "review", 1, {"field": "amount", "op": "in", "value": 3}),
            "rule 'lst'.*non-empty list",
        ),
        (_rule("act", "block", 1, {"field": "amount", "op": ">", "value": 1}), "rule 'act'.*action"),
        (
            _rule("deep", "review", 1, {"all": [{"any": [{"field": "x", "op": "==", "value": 1}]}]}),
            r"rule 'deep' \(rules\[0\]\): when\.all\.0\.any\.0: .*unknown field 'x'",
        ),
        ({"name": "nowhen", "description": "d", "action": "review", "priority": 1}, "rule 'nowhen'.*when"),
    ],
)
def test_bad_rules_fail_naming_the_rule_and_the_field(rule: dict[str, Any], expected: str) -> None:
    with pytest.raises(RuleFileError, match=expected):
        RuleSet.from_config({"rules": [rule]})


def test_duplicate_names_and_bad_documents_are_refused(tmp_path: Path) -> None:
    rule = _rule("same", "review", 1, {"field": "amount", "op": ">", "value": 1})
    with pytest.raises(RuleFileError, match="repeated: same"):
        RuleSet.from_config({"rules": [rule, rule]})
    with pytest.raises(RuleFileError, match="exactly one key, 'rules'"):
        RuleSet.from_config([rule])
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [unclosed")
    with pytest.raises(RuleFileError, match="not valid YAML"):
        RuleSet.from_yaml(bad)


def test_disabled_rules_do_not_fire_and_to_config_round_trips() -> None:
    on = _rule("on", "review", 1, {"field": "amount", "op": ">", "value": 1})
    off = {**_rule("off", "decline", 9, {"field": "amount", "op": ">", "value": 1}), "enabled": False}
    rules = RuleSet.from_config({"rules": [on, off]})
    assert rules.evaluate(_context([{"amount": 5.0}]))[0].hits == ("on",)
    again = RuleSet.from_config(rules.to_config())
    assert [r.name for r in again.rules] == ["on"]


def test_context_needs_every_field() -> None:
    rules = RuleSet.from_config(
        {"rules": [_rule("r", "review", 1, {"field": "amount", "op": ">", "value": 1})]}
    )
    assert "channel" in RULE_FIELDS
    with pytest.raises(KeyError, match="lacks fields"):
        rules.evaluate({"amount": np.array([1.0])})
