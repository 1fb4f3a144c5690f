"""Settings from defaults, the TOML file and the environment, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ownchat.config import ClientSettings, ServerSettings


class ExampleSettings(ServerSettings):
    model_config = {"env_prefix": "OWNCHAT_EXAMPLE_", "extra": "ignore"}  # type: ignore[assignment]
    toml_table = "example"


def test_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('token = "from-file"\n[example]\nport = 6001\nlog_level = "DEBUG"\n')
    monkeypatch.setenv("OWNCHAT_CONFIG", str(config))
    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OWNCHAT_EXAMPLE_LOG_LEVEL", "WARNING")
    settings = ExampleSettings()
    assert settings.port == 6001
    assert settings.log_level == "WARNING"
    assert settings.home == tmp_path / "home"
    assert settings.token is not None and settings.token.get_secret_value() == "from-file"


def test_invalid_values_are_refused_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWNCHAT_EXAMPLE_PORT", "70000")
    with pytest.raises(ValidationError):
        ExampleSettings()


def test_a_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWNCHAT_CONFIG", "/nonexistent/config.toml")
    with pytest.raises(FileNotFoundError):
        ClientSettings()


def test_client_addresses_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWNCHAT_TRAINER_ADDRESS", "127.0.0.1:7000")
    assert ClientSettings().address("trainer") == "127.0.0.1:7000"
    assert ClientSettings().address("data") == "127.0.0.1:50051"


def test_the_shells_home_and_token_are_not_ownchats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OWNCHAT_HOME", raising=False)
    monkeypatch.delenv("OWNCHAT_TOKEN", raising=False)
    monkeypatch.delenv("OWNCHAT_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("TOKEN", "someone-elses")
    settings = ExampleSettings()
    assert settings.home == tmp_path / ".ownchat"
    assert settings.token is None
