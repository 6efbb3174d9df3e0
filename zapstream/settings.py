"""Settings: the environment (and a `.env` file beside it), read once and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec


class ConfigError(Exception):
    """A setting or streams.yaml value is missing or wrong; the message names where and why.

    Only cli.py turns it into exit status 1.
    """


DEFAULT_GRAPH_API = "https://graph.facebook.com/v25.0"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/zapstream"
    duckdb_path: str = "data/analytics.duckdb"
    # The archive projection's Parquet files and checkpoint (projections/archive.py).
    archive_dir: str = "data/archive"
    config_path: str = "streams.yaml"
    # Two comma-separated secrets are accepted while one is rotated.
    app_secrets: tuple[str, ...] = ()
    verify_token: str = ""
    access_token: str = ""
    api_url: str = DEFAULT_GRAPH_API
    responder: str = "rules"
    openai_base_url: str = ""
    openai_api_key: str = ""
    openai_model: str = ""
    handoff_webhook_url: str = ""
    handoff_webhook_secret: str = ""
    log_level: str = "info"

    def require(self, *names: str) -> None:
        """Raise ConfigError naming the first required setting that is empty."""
        for name in names:
            if not getattr(self, name):
                raise ConfigError(
                    f"missing setting {_ENV_NAMES[name]} (set it in the environment or .env)"
                )


# Settings field -> environment variable.
_ENV_NAMES: dict[str, str] = {
    "redis_url": "REDIS_URL",
    "database_url": "DATABASE_URL",
    "duckdb_path": "DUCKDB_PATH",
    "archive_dir": "ARCHIVE_DIR",
    "config_path": "ZAPSTREAM_CONFIG",
    "app_secrets": "WHATSAPP_APP_SECRET",
    "verify_token": "WHATSAPP_VERIFY_TOKEN",
    "access_token": "WHATSAPP_ACCESS_TOKEN",
    "api_url": "WHATSAPP_API_URL",
    "responder": "RESPONDER",
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "openai_model": "OPENAI_MODEL",
    "handoff_webhook_url": "HANDOFF_WEBHOOK_URL",
    "handoff_webhook_secret": "HANDOFF_WEBHOOK_SECRET",
    "log_level": "ZAPSTREAM_LOG_LEVEL",
}

RESPONDERS = ("rules", "openai")


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; `#` comments, `export ` prefixes and matching quotes are allowed."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    """Build Settings from `environ` (default: os.environ) over the values of `dotenv`."""
    source: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        source.update(read_dotenv(dotenv))
    source.update(os.environ if environ is None else environ)
    values: dict[str, object] = {}
    for field, env_name in _ENV_NAMES.items():
        value = source.get(env_name, "").strip()
        if not value:
            continue
        if field == "app_secrets":
            secrets = tuple(s.strip() for s in value.split(",") if s.strip())
            if len(secrets) > 2:
                raise ConfigError(f"{env_name}: at most two secrets (the current and the next)")
            values[field] = secrets
        else:
            values[field] = value
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.responder not in RESPONDERS:
        raise ConfigError(
            f"RESPONDER: expected one of {', '.join(RESPONDERS)}, got {settings.responder!r}"
        )
    return settings
