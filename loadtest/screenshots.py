"""`python -m loadtest.screenshots`: retake the README's Ray dashboard and MLflow screenshots, headless."""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtest.bench_targets import REPO_ROOT, ServerProcess, TargetStartError, private_serve_ports
from loadtest.chromium import Chromium, Shot, ShotError, chromium, set_local_storage, take
from serve_app.redis_server import free_port

EXPERIMENT = "fraud-scorer-training"
MODEL_NAME = "fraud-scorer"
PR_CURVE = "pr_curve.png"
# Metric columns of the run list and their widths in pixels: each header whole, all four in 1280 px.
RUN_COLUMNS = {
    "holdout_pr_auc": 145,
    "holdout_pr_auc_xgb": 158,
    "holdout_pr_auc_lr": 165,
    "holdout_recall_at_1pct_fpr": 214,
}
SIZE_BUDGET_BYTES = 400_000
# Present only where the MLflow UI shows them: its assistant side panel opens by itself on a first visit
# and would cover a third of every shot; the collapsed sidebar leaves room for the metric columns.
MLFLOW_CLOSE_ASSISTANT = 'button[aria-label="Close"]'
MLFLOW_COLLAPSE_SIDEBAR = 'button[aria-label="Toggle sidebar"]'


def log_in_to_dashboard(browser: Chromium, origin: str, token: str) -> None:
    """Ray's dashboard asks for the cluster's token; POST /api/authenticate sets its session cookie."""
    target, session = browser.open_tab(origin + "/")
    if not browser.wait_for(session, 'document.readyState === "complete"', 30):
        raise ShotError(f"{origin} did not load")
    headers = json.dumps({"Authorization": f"Bearer {token}"})
    status = browser.evaluate(
        session, f'fetch("/api/authenticate", {{method: "POST", headers: {headers}}}).then(r => r.status)'
    )
    browser.call("Target.closeTarget", {"targetId": target})
    if status != 200:
        raise ShotError(f"the Ray dashboard at {origin} refused the cluster's token (HTTP {status})")


def tracking_uri(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"


def mlflow_shots(base: str, store_uri: str) -> tuple[dict[str, Any], list[Shot]]:
    """The training experiment's run list, its newest run's PR curve, the registered model's aliases."""
    from mlflow.tracking import MlflowClient  # slow import, only needed here

    client = MlflowClient(tracking_uri=store_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise ShotError(f"no experiment {EXPERIMENT!r} in {store_uri}; run `make train` first")
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise ShotError(f"experiment {EXPERIMENT!r} has no runs; run `make train` first")
    run, exp_id = runs[0], experiment.experiment_id
    columns = [f"metrics.`{name}`" for name in RUN_COLUMNS]
    storage: dict[str, Any] = {
        "mlflow.workflowType_v1": "machine_learning",  # the "Model training" view, not the GenAI one
        f'MLflowLocalStorage-1.1-ExperimentPage-["{exp_id}"]-ReactComponentState': {
            "selectedColumns": columns,
            # The UI applies stored widths only together with a stored column order.
            "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns],
            "columnWidths": {f"metrics.`{name}`": width for name, width in RUN_COLUMNS.items()},
        },
    }
    tidy = (MLFLOW_CLOSE_ASSISTANT, MLFLOW_COLLAPSE_SIDEBAR)
    run_url = f"{base}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    return storage, [
        Shot("mlflow-runs.png", f"{base}/#/experiments/{exp_id}/runs", (run.info.run_name,), tidy, 440),
        Shot("mlflow-pr-curve.png", f"{run_url}/artifacts/{PR_CURVE}", (PR_CURVE, "KB"), tidy),
        Shot(
            "mlflow-model-champion.png", f"{base}/#/models/{MODEL_NAME}", ("champion", "Version"), tidy, 520
        ),
    ]


def shoot_mlflow(
    browser: Chromium, data_dir: Path, out_dir: Path, work_dir: Path, timeout_s: float
) -> list[Path]:
    port = free_port()
    ui = ServerProcess(
        name="mlflow ui",
        command=[
            *(sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(data_dir)),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        base_url=f"http://127.0.0.1:{port}",
        log_path=work_dir / "mlflow-ui.log",
        ready_path="/health",
    ).start(ready_timeout_s=120)
    try:
        storage, shots = mlflow_shots(ui.base_url, tracking_uri(data_dir))
        set_local_storage(browser, ui.base_url, storage)
        return [take(browser, shot, out_dir, timeout_s) for shot in shots]
    finally:
        ui.stop()


def send_samples(base_url: str, api_key: str, count: int) -> int:
    """Score the README's sample transactions, so the dashboard has requests to show; returns the 200s."""
    samples = sorted((REPO_ROOT / "configs" / "samples").glob("*.json"))
    bodies = [path.read_bytes() for path in samples]
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    ok = 0
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        for i in range(count):
            ok += client.post("/v1/score", content=bodies[i % len(bodies)]).status_code == 200
    return ok


def shoot_ray(browser: Chromium, args: argparse.Namespace, work_dir: Path) -> list[Path]:
    """The Serve config on private ports and an empty store, some traffic, then two dashboard pages."""
    config = yaml.safe_load(args.serve_config.read_text(encoding="utf-8"))
    http_port, dashboard_port = free_port(), free_port()
    config["http_options"]["port"] = http_port
    config_path = work_dir / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    app = config["applications"][0]["name"]
    deployments = tuple(d["name"] for d in config["applications"][0]["deployments"])
    api_key = secrets.token_urlsafe(16)  # this stack only; never printed
    # Ray enables token auth on local clusters; a token of our own (not ~/.ray/auth_token, which other
    # clusters on the machine share) that the browser then presents to the dashboard.
    ray_token = secrets.token_hex(32)
    token_path = work_dir / "ray_auth_token"
    token_path.touch(mode=0o600)
    token_path.write_text(ray_token, encoding="utf-8")
    graph = ServerProcess(
        name="serve_app.run",
        command=[
            *(sys.executable, "-m", "serve_app.run", "--config", str(config_path)),
            *("--no-train", "--no-warm", "--dashboard-port", str(dashboard_port)),
        ],
        base_url=f"http://127.0.0.1:{http_port}",
        log_path=work_dir / "serve.log",
        env={
            "FRAUD_API_KEYS": api_key,
            # A data directory of its own: the embedded Redis keeps its files there, and a second Redis on
            # the files of a stack already running from data/ would corrupt that stack's store.
            "FRAUD_DATA_DIR": str(work_dir / "data"),
            "MLFLOW_TRACKING_URI": tracking_uri(args.data_dir),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            **private_serve_ports(),
        },
    ).start(ready_timeout_s=300)
    try:
        scored = send_samples(graph.base_url, api_key, args.requests)
        print(f"scored {scored}/{args.requests} sample requests", flush=True)
        log_in_to_dashboard(browser, f"http://127.0.0.1:{dashboard_port}", ray_token)
        dashboard = f"http://127.0.0.1:{dashboard_port}/#/serve"
        shots = [
            # Heights that fit the graph topology's five deployment rows (the fused one has a single row).
            Shot("ray-serve-applications.png", dashboard, (app, "RUNNING", *deployments), height=940),
            Shot(
                "ray-serve-deployments.png",
                f"{dashboard}/applications/{app}",
                ("HEALTHY", *deployments),
                height=1000,
            ),
        ]
        return [take(browser, shot, args.out, args.timeout) for shot in shots]
    finally:
        graph.stop()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.screenshots",
        description="Retake docs/screenshots/*.png: MLflow (run list, PR curve, champion alias) from the "
        "local tracking store, and the Ray dashboard's Serve pages from a short-lived stack started with "
        "`python -m serve_app.run` on private ports. Needs Chromium (apt-get install chromium).",
    )
    parser.add_argument("--only", choices=["mlflow", "ray"], help="take one group only (default: both)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots", help="PNG directory")
    parser.add_argument(
        "--data-dir", type=Path, default=REPO_ROOT / "data", help="holds mlflow.db: shown and served"
    )
    parser.add_argument(
        "--serve-config",
        type=Path,
        default=REPO_ROOT / "configs" / "serve_graph.yaml",
        help="Serve config of the stack shot (default: the graph topology, whose stages are deployments; "
        "serve_config.yaml, the fused one, shows a single Ingress)",
    )
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium", help="browser binary")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in pixels")
    parser.add_argument("--height", type=int, default=800, help="viewport height in pixels")
    parser.add_argument("--requests", type=int, default=40, help="sample requests sent before the Ray shots")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a page may take to render")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which(args.chromium) is None:
        print(f"error: --chromium {args.chromium!r} not found (apt-get install chromium)", file=sys.stderr)
        return 2
    if not (args.data_dir / "mlflow.db").is_file():
        print(f"error: --data-dir {args.data_dir} has no mlflow.db; run `make train` first", file=sys.stderr)
        return 2
    if args.only != "mlflow" and not args.serve_config.is_file():
        print(f"error: --serve-config {args.serve_config} is not a file", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    taken: list[Path] = []
    with (
        tempfile.TemporaryDirectory(prefix="screenshots-") as work,
        chromium(args.chromium, args.width, args.height) as browser,
    ):
        try:
            if args.only in (None, "mlflow"):
                taken += shoot_mlflow(browser, args.data_dir, args.out, Path(work), args.timeout)
            if args.only in (None, "ray"):
                taken += shoot_ray(browser, args, Path(work))
        except (ShotError, TargetStartError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for path in taken:
        size = path.stat().st_size
        note = "" if size <= SIZE_BUDGET_BYTES else f"  (over the {SIZE_BUDGET_BYTES // 1000} KB budget)"
        print(f"{path}  {size // 1000} KB{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
