"""MLflow "models from code" script: the registered bundle as a pyfunc for MLflow users (not for serving).

MLflow executes this file when the model is loaded, so the `set_model` call at the bottom is the point of
the module rather than an import side effect; nothing in the project imports it. Input: a DataFrame with
the contract's model feature columns (FEATURE_NAMES); output: the calibrated ensemble probability, each
model's probability and the threshold decision (no business rules, those live in serving).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from serve_app.bundle import ModelBundle, load_bundle

BUNDLE_ARTIFACT = "bundle"


class FraudScorerPyfunc(PythonModel):
    """Loads the raw bundle artifacts with `load_bundle` (no pickle) and scores feature rows."""

    def __init__(self) -> None:
        self._bundle: ModelBundle | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self._bundle = load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        bundle = self._bundle
        if bundle is None:
            raise RuntimeError("model context not loaded")
        missing = [n for n in bundle.feature_names if n not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks feature columns {missing}")
        x = model_input[list(bundle.feature_names)].to_numpy(dtype=np.float64)
        p_lr, p_xgb = bundle.lr.predict_proba(x), bundle.xgb.predict_proba(x)
        p = bundle.combine(p_lr, p_xgb)
        decision = np.where(
            p >= bundle.decline_threshold,
            "decline",
            np.where(p >= bundle.review_threshold, "review", "approve"),
        )
        return pd.DataFrame({"fraud_probability": p, "p_lr": p_lr, "p_xgb": p_xgb, "decision": decision})


mlflow.models.set_model(FraudScorerPyfunc())
