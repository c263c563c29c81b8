"""Environment variables through which `python -m loadtest` hands a run's settings to the Locust process."""

from __future__ import annotations

import os

SCENARIO_ENV = "FRAUD_LOADTEST_SCENARIO"
API_KEY_ENV = "FRAUD_LOADTEST_API_KEY"  # falls back to the first of FRAUD_API_KEYS
SEED_ENV = "FRAUD_LOADTEST_SEED"
RUN_TOKEN_ENV = "FRAUD_LOADTEST_RUN_TOKEN"  # noqa: S105 - a variable name, not a secret
ALLOW_DEGRADED_ENV = "FRAUD_LOADTEST_ALLOW_DEGRADED"  # "1": a degraded answer is counted, not failed
ANSWERS_FILE_ENV = "FRAUD_LOADTEST_ANSWERS_FILE"  # where Locust leaves its tally of answers (JSON)


def selected_scenario() -> str:
    return os.environ.get(SCENARIO_ENV, "steady").strip() or "steady"


def degraded_is_failure() -> bool:
    return os.environ.get(ALLOW_DEGRADED_ENV, "0").strip() not in ("1", "true", "yes")


def api_key() -> str:
    """The key to send: FRAUD_LOADTEST_API_KEY, else the first of the server-side FRAUD_API_KEYS."""
    key = os.environ.get(API_KEY_ENV, "")
    if not key:
        key = next((k.strip() for k in os.environ.get("FRAUD_API_KEYS", "").split(",") if k.strip()), "")
    return key
