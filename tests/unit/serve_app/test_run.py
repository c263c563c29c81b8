"""`make run`'s secret hand-over: keys and the Redis URL reach the replicas as owner-only files, never as
runtime_env values."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from serve_app.run import write_key_files
from serve_app.settings import Settings


def test_keys_are_written_owner_only_and_read_back_by_the_replica_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUD_API_KEYS", "alpha-key, beta-key")
    monkeypatch.setenv("FRAUD_ADMIN_KEYS", "root-key")
    monkeypatch.setenv("FRAUD_REDIS_URL", "redis://:s3cret@127.0.0.1:6380/0")
    variables = write_key_files(Settings(), tmp_path / "secrets")
    assert set(variables) == {"FRAUD_API_KEYS_FILE", "FRAUD_ADMIN_KEYS_FILE", "FRAUD_REDIS_URL_FILE"}
    assert not any("s3cret" in value for value in variables.values())
    for value in variables.values():
        assert stat.S_IMODE(Path(value).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    # A replica sees only the file variables (what the runtime_env carries) and must find the same keys.
    monkeypatch.delenv("FRAUD_API_KEYS")
    monkeypatch.delenv("FRAUD_ADMIN_KEYS")
    monkeypatch.delenv("FRAUD_REDIS_URL")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    replica = Settings()
    assert replica.api_key_list() == ["alpha-key", "beta-key"]
    assert replica.admin_key_list() == ["root-key"]
    assert replica.store_url() == "redis://:s3cret@127.0.0.1:6380/0"


def test_an_inline_redis_url_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "url").write_text("redis://from-file:6380/0\n")
    monkeypatch.setenv("FRAUD_REDIS_URL_FILE", str(tmp_path / "url"))
    assert Settings().store_url() == "redis://from-file:6380/0"
    monkeypatch.setenv("FRAUD_REDIS_URL", "redis://inline:6380/0")
    assert Settings().store_url() == "redis://inline:6380/0"


def test_writing_again_replaces_the_old_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_API_KEYS", "old-key")
    write_key_files(Settings(), tmp_path)
    monkeypatch.setenv("FRAUD_API_KEYS", "new-key")
    variables = write_key_files(Settings(), tmp_path)
    assert Path(variables["FRAUD_API_KEYS_FILE"]).read_text() == "new-key"


def test_a_missing_key_file_is_an_error_not_an_open_door(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUD_API_KEYS_FILE", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError):
        Settings().api_key_list()


def test_the_edge_takes_the_configured_address_and_serve_moves_to_a_private_port() -> None:
    from serve_app.redis_server import free_port
    from serve_app.run import REPO_ROOT, move_serve_behind_edge, port_is_free, read_config

    config = read_config(REPO_ROOT / "serve_config.yaml")
    config.http_options.host, config.http_options.port = "127.0.0.1", free_port()
    wanted = config.http_options.port
    public = move_serve_behind_edge(config)
    assert (public.host, public.port) == ("127.0.0.1", wanted)
    assert config.http_options.host == "127.0.0.1"  # Serve itself is never reachable from outside
    assert config.http_options.port != wanted
    assert port_is_free(config.http_options.port)


def test_a_taken_public_port_stops_the_start_before_anything_runs() -> None:
    import socket

    from serve_app.run import REPO_ROOT, move_serve_behind_edge, read_config

    config = read_config(REPO_ROOT / "serve_config.yaml")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config.http_options.host, config.http_options.port = "127.0.0.1", listener.getsockname()[1]
        with pytest.raises(SystemExit, match="in use"):
            move_serve_behind_edge(config)
