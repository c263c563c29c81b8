"""Runtime configuration from the environment (prefix FRAUD_); MLflow keeps its own MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can set. Read once per process with `get_settings()`."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Generated data, local MLflow store, Redis files")
    redis_url: str | None = Field(None, description="External Redis; unset means an embedded server")
    model_name: str = Field("fraud-scorer", description="Registered MLflow model name")
    model_alias: str = Field("champion", description="Alias the serving graph loads")
    api_keys: SecretStr = Field(SecretStr(""), description="Comma-separated API keys for X-API-Key")
    admin_keys: SecretStr = Field(SecretStr(""), description="Comma-separated keys for admin routes")
    # Files instead of values: Ray logs a replica's runtime_env (env vars included) in runtime_env_agent.log
    # and shows it in the dashboard, so a key handed over that way leaks; a path does not.
    api_keys_file: Path | None = Field(None, description="File of API keys, comma- or line-separated")
    admin_keys_file: Path | None = Field(None, description="File of admin keys, comma- or line-separated")
    redis_url_file: Path | None = Field(
        None, description="File holding the Redis URL (it may carry a password); FRAUD_REDIS_URL wins"
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    label_delay_days: float = Field(2.0, ge=0, description="Days until a fraud label is known offline")

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI wins; otherwise a SQLite store under the data directory."""
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        return str((self.data_dir / "mlartifacts").resolve())

    def store_url(self) -> str | None:
        """FRAUD_REDIS_URL, else the URL in FRAUD_REDIS_URL_FILE (a missing file is an error), else None."""
        if self.redis_url:
            return self.redis_url
        if self.redis_url_file is not None:
            return self.redis_url_file.read_text(encoding="utf-8").strip() or None
        return None

    def api_key_list(self) -> list[str]:
        return _key_list(self.api_keys, self.api_keys_file)

    def admin_key_list(self) -> list[str]:
        return _key_list(self.admin_keys, self.admin_keys_file)


def _key_list(inline: SecretStr, path: Path | None) -> list[str]:
    """Keys given inline plus those in the file (a missing file is an error: it would lock everyone out)."""
    text = inline.get_secret_value()
    if path is not None:
        text += "," + path.read_text(encoding="utf-8")
    return [k.strip() for k in text.replace("\n", ",").split(",") if k.strip()]


def get_settings() -> Settings:
    """A fresh read of the environment (cheap; callers keep the result)."""
    return Settings()
