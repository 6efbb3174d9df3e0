"""load_settings(): the environment over .env; a missing required setting named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from zapstream.settings import ConfigError, load_settings, read_dotenv


def test_defaults_are_the_contract_defaults(tmp_path: Path) -> None:
    settings = load_settings({}, dotenv=tmp_path / "absent")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/zapstream"
    assert settings.duckdb_path == "data/analytics.duckdb"
    assert settings.config_path == "streams.yaml"
    assert settings.responder == "rules"


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nexport REDIS_URL='redis://a:1/0'\nWHATSAPP_VERIFY_TOKEN=\"tok\"\n"
    )
    settings = load_settings({"REDIS_URL": "redis://b:2/0"}, dotenv=dotenv)
    assert settings.redis_url == "redis://b:2/0"
    assert settings.verify_token == "tok"


def test_two_secrets_during_rotation_and_no_more(tmp_path: Path) -> None:
    settings = load_settings({"WHATSAPP_APP_SECRET": "old, new"}, dotenv=None)
    assert settings.app_secrets == ("old", "new")
    with pytest.raises(ConfigError, match="at most two"):
        load_settings({"WHATSAPP_APP_SECRET": "a,b,c"}, dotenv=None)


def test_missing_required_setting_is_named() -> None:
    settings = load_settings({"WHATSAPP_VERIFY_TOKEN": "x"}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^missing setting WHATSAPP_APP_SECRET"):
        settings.require("app_secrets", "verify_token")


def test_unknown_responder_is_refused() -> None:
    with pytest.raises(ConfigError, match="RESPONDER"):
        load_settings({"RESPONDER": "magic"}, dotenv=None)


def test_dotenv_line_without_equals_is_an_error(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("REDIS_URL\n")
    with pytest.raises(ConfigError, match=r"\.env:1: expected KEY=VALUE"):
        read_dotenv(dotenv)
