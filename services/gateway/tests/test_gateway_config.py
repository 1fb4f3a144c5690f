"""The gateway's settings, its command line, and what it must not import."""

from __future__ import annotations

import json
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


def test_gateway_tracing_is_off_unless_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENTOML_CONFIG_OVERRIDES", raising=False)
    untraced = json.loads(serve_environment(GatewaySettings())["BENTOML_CONFIG_OVERRIDES"])
    assert untraced == {"tracing": {"excluded_urls": [".*"]}}
    sampled = serve_environment(GatewaySettings(tracing_sample_rate=0.25))
    assert json.loads(sampled["BENTOML_CONFIG_OVERRIDES"]) == {"tracing": {"sample_rate": 0.25}}
    # An operator's own BentoML overrides are left as they are.
    monkeypatch.setenv("BENTOML_CONFIG_OVERRIDES", '{"tracing": {"sample_rate": 1.0}}')
    own = serve_environment(GatewaySettings())["BENTOML_CONFIG_OVERRIDES"]
    assert own == '{"tracing": {"sample_rate": 1.0}}'


def test_gateway_imports_no_engine() -> None:
    """The gateway installs without torch, transformers or vLLM: it must not import them."""
    code = (
        "import sys, ownchat_gateway.service;"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'vllm'});"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
