"""The edge's configuration: what HAProxy is told, and that HAProxy itself (-c) accepts it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.edge import (
    Address,
    EdgeError,
    EdgeSettings,
    main,
    render_config,
    shed_response,
    write_config,
)

LISTEN, UPSTREAM = Address("127.0.0.1", 18000), Address("127.0.0.1", 18001)


def test_settings_come_from_fraud_edge_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_EDGE_MAX_IN_FLIGHT", "24")
    monkeypatch.setenv("FRAUD_EDGE_QUEUE_TIMEOUT_MS", "15")
    settings = EdgeSettings()
    assert (settings.max_in_flight, settings.queue_timeout_ms) == (24, 15)
    monkeypatch.setenv("FRAUD_EDGE_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValidationError, match="max_in_flight"):
        EdgeSettings()


def test_config_limits_serve_and_lets_probes_past_the_limit(tmp_path: Path) -> None:
    settings = EdgeSettings(max_in_flight=12, max_queue=6, queue_timeout_ms=15, retry_after_s=2)
    text = render_config(settings, LISTEN, UPSTREAM, tmp_path / "503.http")
    assert "bind 127.0.0.1:18000" in text
    assert "server serve 127.0.0.1:18001 maxconn 12" in text
    assert "timeout queue 15ms" in text
    assert "queue(scorer) ge 6" in text
    # A short stall may queue up to burst_queue, while at most burst_per_s arrivals a second find it long.
    assert "queue(scorer) ge 40" in text
    assert "sc0_gpc0_rate gt 120" in text
    assert "sc-inc-gpc0(0) if !probe queue_standing" in text
    assert "hdr Retry-After 2" in text
    # Probes have their own backend without a connection limit, and the shedding rule skips them.
    assert "use_backend probes if probe" in text
    assert "if !probe" in text
    assert "acl probe path /healthz /readyz" in text


def test_the_burst_queue_cannot_be_shorter_than_the_standing_queue() -> None:
    with pytest.raises(ValidationError, match="burst_queue"):
        EdgeSettings(max_queue=16, burst_queue=8)
    assert EdgeSettings(max_queue=16, burst_queue=16).burst_queue == 16


def test_config_never_logs_requests(tmp_path: Path) -> None:
    """Bodies and headers carry card data and API keys: the edge has no log target at all."""
    text = render_config(EdgeSettings(metrics_port=19102), LISTEN, UPSTREAM, tmp_path / "503.http")
    assert not [line for line in text.splitlines() if line.strip().startswith(("log ", "option httplog"))]


def test_the_shed_page_is_a_complete_http_answer_with_retry_after() -> None:
    raw = shed_response(3)
    head, body = raw.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 503 ")
    assert "Retry-After: 3" in head.split("\r\n")
    assert f"Content-Length: {len(body)}" in head.split("\r\n")
    assert '"detail"' in body


def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    config = write_config(EdgeSettings(metrics_port=19102), LISTEN, UPSTREAM, tmp_path)
    assert config.is_file()
    assert "prometheus-exporter" in config.read_text()
    assert (tmp_path / "503.http").read_bytes().startswith(b"HTTP/1.1 503 ")


def test_a_config_haproxy_refuses_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match=r"haproxy\.cfg"):
        write_config(EdgeSettings(), Address("not a host!", 18000), UPSTREAM, tmp_path)


def test_following_dns_lets_haproxy_start_before_the_upstream_name_resolves(tmp_path: Path) -> None:
    """In compose or Kubernetes the edge may start before Serve's name exists; it must not refuse."""
    unresolvable = Address("fraud-scorer-serve-svc.invalid", 8000)
    with pytest.raises(EdgeError):
        write_config(EdgeSettings(), LISTEN, unresolvable, tmp_path / "static")
    config = write_config(EdgeSettings(follow_dns=True), LISTEN, unresolvable, tmp_path / "dns")
    text = config.read_text()
    assert "parse-resolv-conf" in text
    assert text.count("resolvers platform init-addr last,libc,none") == 2  # scoring and probes


def test_addresses_parse_host_and_port() -> None:
    assert Address.parse("0.0.0.0:8000") == Address("0.0.0.0", 8000)
    assert str(Address.parse("ray-head:8000")) == "ray-head:8000"
    for bad in ("8000", "host:", ":8000", "host:http"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            Address.parse(bad)


def test_cli_prints_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--listen", "127.0.0.1:18000", "--upstream", "127.0.0.1:18001", "--dir", str(tmp_path)]
    assert main([*argv, "--print-config"]) == 0
    assert "server serve 127.0.0.1:18001 maxconn 12" in capsys.readouterr().out


def test_cli_rejects_a_bad_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--listen", "8000", "--upstream", "127.0.0.1:18001", "--print-config"])
    assert "--listen" in capsys.readouterr().err
