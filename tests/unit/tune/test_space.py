"""YAML job config -> Ray Tune search space, and clear errors that name the offending field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from train.fit import FitConfig
from tune.space import (
    ConfigError,
    ResourcePlan,
    TuneJobConfig,
    default_point,
    load_config,
    param_space,
    parse_config,
    plan_resources,
)

REPO_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "tune.yaml"


def _space(**xgboost: Any) -> dict[str, Any]:
    return {"spaces": {"xgboost": xgboost}}


def test_repository_config_is_valid_and_searches_the_documented_knobs() -> None:
    config = load_config(REPO_CONFIG)
    space = param_space(config.spaces)
    for name in (
        "xgb_max_depth",
        "xgb_learning_rate",
        "xgb_max_rounds",
        "xgb_subsample",
        "xgb_colsample_bytree",
        "xgb_min_child_weight",
        "xgb_scale_pos_weight_multiplier",
        "lr_c",
        "lr_class_weight",
    ):
        assert name in space, name
    # Every key is a FitConfig field, so a sampled trial config builds a FitConfig as is.
    assert set(space) <= set(FitConfig.model_fields)


def test_yaml_specs_become_tune_domains_with_inclusive_integer_bounds(tmp_path: Path) -> None:
    path = tmp_path / "tune.yaml"
    path.write_text(
        """
num_samples: 4
spaces:
  xgboost:
    max_depth: {type: int, low: 3, high: 5}
    learning_rate: {type: float, low: 0.01, high: 0.3, log: true}
    subsample: 0.9
  lr:
    class_weight: {type: choice, values: [balanced, null, 25.0]}
""",
        encoding="utf-8",
    )
    config = load_config(path)
    space = param_space(config.spaces)

    depth = space["xgb_max_depth"]
    assert isinstance(depth, Integer)
    assert (depth.lower, depth.upper) == (3, 6)  # Tune's upper bound is exclusive, the YAML's inclusive
    assert {depth.sample() for _ in range(200)} == {3, 4, 5}
    eta = space["xgb_learning_rate"]
    assert isinstance(eta, Float)
    assert isinstance(eta.get_sampler(), LogUniform)
    assert space["xgb_subsample"] == 0.9  # a bare scalar is a constant
    weights = space["lr_class_weight"]
    assert isinstance(weights, Categorical)
    assert weights.categories == ["balanced", None, 25.0]
    assert "lr_c" not in space  # not mentioned: FitConfig's default applies
    for _ in range(20):
        FitConfig(**{k: v.sample() if hasattr(v, "sample") else v for k, v in space.items()})


def test_grid_values_become_a_grid_search() -> None:
    config = parse_config(
        {
            "search_alg": {"name": "grid"},
            **_space(max_depth={"type": "grid", "values": [4, 6]}, subsample=0.7),
        }
    )
    assert param_space(config.spaces)["xgb_max_depth"] == {"grid_search": [4, 6]}


def test_default_point_is_fit_config_defaults_clipped_into_the_space() -> None:
    config = parse_config(
        _space(
            max_depth={"type": "int", "low": 2, "high": 4},
            learning_rate={"type": "float", "low": 0.01, "high": 0.3},
        )
    )
    defaults = FitConfig()
    point = default_point(config.spaces)
    assert point == {"xgb_max_depth": 4, "xgb_learning_rate": defaults.xgb_learning_rate}
    assert defaults.xgb_max_depth > 4


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (_space(max_depth={"type": "float", "low": 3, "high": 8}), "spaces.xgboost.max_depth", "type: int"),
        (_space(max_depth={"type": "int", "low": 0, "high": 8}), "spaces.xgboost.max_depth", "greater than"),
        (_space(subsample={"type": "float", "low": 0.5, "high": 1.5}), "spaces.xgboost.subsample", "1.5"),
        (_space(max_depth={"type": "int", "low": 6, "high": 3}), "spaces.xgboost.max_depth", "below high"),
        (_space(max_depth={"type": "normal", "mu": 6}), "spaces.xgboost.max_depth", "'normal'"),
        (_space(depth=3), "spaces.xgboost.depth", "Extra inputs"),
        (
            _space(learning_rate={"type": "float", "low": 0.0, "high": 0.3, "log": True}),
            "learning_rate",
            "low > 0",
        ),
        (
            {"spaces": {"lr": {"class_weight": {"type": "choice", "values": ["bal"]}}}},
            "class_weight",
            "'bal'",
        ),
        ({"num_samples": 0}, "num_samples", "greater than or equal to 1"),
        ({"cpus_per_trial": "lots"}, "cpus_per_trial", "'auto' or a positive number"),
        ({"scheduler": {"grace_period": 100, "max_t": 10}}, "scheduler", "must not exceed max_t"),
        ({"scheduler": {"name": "pbt"}}, "scheduler.name", "'asha'"),
        ({"promotion": {"margin": -0.1}}, "promotion.margin", "greater than or equal to 0"),
        ({"num_sample": 4}, "num_sample", "Extra inputs"),
        (
            {"search_alg": {"name": "optuna"}, **_space(max_depth={"type": "grid", "values": [3, 4]})},
            "spaces.xgboost.max_depth",
            "cannot use `type: grid`",
        ),
        (
            {"search_alg": {"name": "grid"}, **_space(max_depth={"type": "int", "low": 3, "high": 4})},
            "spaces.xgboost.max_depth",
            "`type: grid` or constants only",
        ),
    ],
)
def test_bad_config_names_the_field(raw: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "test.yaml")
    message = str(caught.value)
    assert "test.yaml" in message
    assert field in message
    assert words in message


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spaces: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_config(empty) == TuneJobConfig()


@pytest.mark.parametrize(
    ("settings", "cluster_cpus", "expected"),
    [
        ({}, 2, ResourcePlan(cpus_per_trial=1.0, max_concurrent=2, nthread=1)),
        ({}, 64, ResourcePlan(cpus_per_trial=4.0, max_concurrent=16, nthread=4)),
        ({"num_samples": 4}, 64, ResourcePlan(cpus_per_trial=16.0, max_concurrent=4, nthread=16)),
        ({"max_concurrent": 4}, 2, ResourcePlan(cpus_per_trial=0.5, max_concurrent=4, nthread=1)),
        ({"cpus_per_trial": 0.5}, 2, ResourcePlan(cpus_per_trial=0.5, max_concurrent=4, nthread=1)),
        ({"cpus_per_trial": 2, "max_concurrent": 3}, 16, ResourcePlan(2.0, 3, 2)),
        ({"num_samples": 1, "cpus_per_trial": 0.5}, 8, ResourcePlan(0.5, 1, 1)),
    ],
)
def test_resource_plan_shares_the_cluster(
    settings: dict[str, Any], cluster_cpus: float, expected: ResourcePlan
) -> None:
    assert plan_resources(parse_config(settings), cluster_cpus) == expected
