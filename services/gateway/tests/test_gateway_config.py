"""The gateway's settings, its command line, and what it must not import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ownchat.config import GATEWAY_DEFAULT_PORT
from ownchat_gateway.__main__ import SERVICE_IMPORT, serve_command, serve_environment
from ownchat_gateway.config import GatewaySettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path))
    for name in ("OWNCHAT_CONFIG", "OWNCHAT_TOKEN", "BENTOML_HOME", "BENTOML_DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)


def test_gateway_defaults() -> None:
    settings = GatewaySettings()
    assert (settings.host, settings.port) == ("127.0.0.1", GATEWAY_DEFAULT_PORT)
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.request_timeout_seconds > 0


def test_gateway_env_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[gateway]\nport = 4100\nmax_body_bytes = 2048\n")
    assert (GatewaySettings().port, GatewaySettings().max_body_bytes) == (4100, 2048)
    monkeypatch.setenv("OWNCHAT_GATEWAY_PORT", "4200")
    assert GatewaySettings().port == 4200


def test_gateway_rejects_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWNCHAT_GATEWAY_MAX_BODY_BYTES", "0")
    with pytest.raises(ValueError):
        GatewaySettings()


def test_gateway_command_line(tmp_path: Path) -> None:
    settings = GatewaySettings(host="127.0.0.1", port=3999)
    command = serve_command(settings)
    assert command[:5] == [sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT]
    assert command[command.index("--port") + 1] == "3999"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    env = serve_environment(settings)
    assert env["BENTOML_DO_NOT_TRACK"] == "True"
    assert Path(env["BENTOML_HOME"]).is_relative_to(tmp_path)
    assert env["OWNCHAT_HOME"] == str(tmp_path)


_EXCLUDED_PROBE = """
from bentoml._internal.configuration.containers import BentoMLContainer
from ownchat_gateway.service import Gateway
Gateway.inject_config()  # what BentoML's worker does before building the app
excluded = BentoMLContainer.tracing_excluded_urls.get()
print(excluded.url_disabled("http://127.0.0.1:3000/v1/chat/completions"))
"""


@pytest.mark.parametrize(("sample_rate", "untraced"), [("0", "True"), ("0.25", "False")])
def test_gateway_tracing_is_off_unless_sampled(
    tmp_path: Path, sample_rate: str, untraced: str
) -> None:
    # The service as BentoML's worker configures it, in a process of its own:
    # BentoML's configuration is global.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OWNCHAT_", "BENTOML_"))}
    env.update(
        OWNCHAT_HOME=str(tmp_path),
        BENTOML_HOME=str(tmp_path / "bentoml"),
        OWNCHAT_GATEWAY_TRACING_SAMPLE_RATE=sample_rate,
    )
    probe = subprocess.run(
        [sys.executable, "-c", _EXCLUDED_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert probe.stdout.strip().splitlines()[-1] == untraced


def test_gateway_imports_no_engine() -> None:
    """The gateway installs without torch, transformers or vLLM: it must not import them."""
    code = (
        "import sys, ownchat_gateway.service;"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'vllm'});"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gateway_limits_and_cors_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    defaults = GatewaySettings()
    assert defaults.cors_allowed_origins == []
    assert (defaults.default_requests_per_minute, defaults.default_tokens_per_day) == (0, 0)
    monkeypatch.setenv("OWNCHAT_GATEWAY_CORS_ALLOWED_ORIGINS", "https://a.example, http://b:5173")
    assert GatewaySettings().cors_allowed_origins == ["https://a.example", "http://b:5173"]
    monkeypatch.setenv("OWNCHAT_GATEWAY_CORS_ALLOWED_ORIGINS", '["https://c.example"]')
    assert GatewaySettings().cors_allowed_origins == ["https://c.example"]
    monkeypatch.delenv("OWNCHAT_GATEWAY_CORS_ALLOWED_ORIGINS")
    (tmp_path / "config.toml").write_text(
        '[gateway]\ncors_allowed_origins = ["*"]\ndefault_tokens_per_minute = 9000\n'
    )
    from_file = GatewaySettings()
    assert from_file.cors_allowed_origins == ["*"]
    assert from_file.default_tokens_per_minute == 9000
    monkeypatch.setenv("OWNCHAT_GATEWAY_DEFAULT_REQUESTS_PER_MINUTE", "-1")
    with pytest.raises(ValueError):
        GatewaySettings()
