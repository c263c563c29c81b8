"""Start, wait for and stop the benchmark's servers (the Ray Serve graph, the baseline) as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from serve_app.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


class TargetStartError(RuntimeError):
    """A server did not come up; the message points at its log."""


def http_ready(url: str, timeout_s: float = 2.0) -> bool:
    """True when GET `url` answers 200 (only ever called with 127.0.0.1 URLs built here)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - local http only
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ServerProcess:
    """A server command run in its own session, so that it and all its children can be stopped together."""

    name: str
    command: Sequence[str]
    base_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/readyz"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self, ready_timeout_s: float) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.command),
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise TargetStartError(f"{self.name} exited with {code}: {self.log_tail()}")
            if http_ready(self.base_url + self.ready_path):
                return self
            time.sleep(0.5)
        self.stop()
        raise TargetStartError(f"{self.name} not ready within {ready_timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {self.log_path})"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGINT (clean: Serve and Ray stop their workers), then SIGTERM, then SIGKILL the whole group."""
        proc = self.process
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the session this object created; nothing else is in it
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)
        # Children that outlived their parent are still in the group: take them down too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def baseline_server(
    port: int, redis_url: str, log_dir: Path, api_key: str, bundle_dir: Path | None
) -> ServerProcess:
    command = [sys.executable, "-m", "loadtest.baseline_app", "--port", str(port), "--redis-url", redis_url]
    if bundle_dir is not None:
        command += ["--bundle-dir", str(bundle_dir)]
    return ServerProcess(
        name="baseline",
        command=command,
        base_url=f"http://127.0.0.1:{port}",
        log_path=log_dir / "baseline.log",
        env={"FRAUD_API_KEYS": api_key},
    )


def graph_server(
    port: int,
    redis_url: str,
    work_dir: Path,
    api_key: str,
    config_path: Path = REPO_ROOT / "serve_config.yaml",
    name: str = "serve",
    dashboard: bool = True,
) -> ServerProcess:
    """The product's own start-up (`python -m serve_app.run`) with a Serve config as shipped, except for
    the HTTP port (a free one) and the dashboard port; the bench's Redis; never trains."""
    raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    raw["http_options"]["host"], raw["http_options"]["port"] = "127.0.0.1", port
    config = work_dir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "serve_app.run", "--config", str(config), "--no-train"]
    command += ["--dashboard-port", str(free_port())]
    if not dashboard:
        command.append("--no-dashboard")
    return ServerProcess(
        name=name,
        command=command,
        base_url=f"http://127.0.0.1:{port}",
        log_path=work_dir / f"{name}.log",
        env={"FRAUD_API_KEYS": api_key, "FRAUD_REDIS_URL": redis_url, **private_serve_ports()},
    )


def private_serve_ports() -> dict[str, str]:
    """Ports of our own for every listener Ray Serve otherwise puts on a fixed port.

    With the HAProxy ingress, Serve binds HAProxy metrics/stats (9101, 8404), a fallback proxy (8500,
    SO_REUSEPORT) and replica ports from 30000. A second graph on the machine (a `make run`, a test)
    then either crashes ours at start-up or, worse, shares 8500/30000 with it: the kernel hands our
    requests to the other graph. Measured here: 401s from a foreign graph's API keys.
    """
    http_base, grpc_base = free_port(), free_port()
    return {
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(min(http_base + 64, 65535)),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(min(grpc_base + 64, 65535)),
    }
