"""Fixtures for cross-service tests: free loopback ports and process tracking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ownchat.testing import free_port

GRPC_SERVICES = ("data", "trainer", "evaluator", "serving")


@pytest.fixture
def ownchat_env(tmp_path: Path) -> dict[str, str]:
    """Environment for an isolated ownchat: its own home and free ports for everything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OWNCHAT_")}
    env["OWNCHAT_HOME"] = str(tmp_path / "home")
    env["PYTHONUNBUFFERED"] = "1"
    for service in GRPC_SERVICES:
        port = free_port()
        prefix = f"OWNCHAT_{service.upper()}"
        env[f"{prefix}_PORT"] = str(port)
        env[f"{prefix}_ADDRESS"] = f"127.0.0.1:{port}"
        env[f"{prefix}_METRICS_PORT"] = str(free_port())
    gateway_port = free_port()
    env["OWNCHAT_GATEWAY_PORT"] = str(gateway_port)
    env["OWNCHAT_GATEWAY_URL"] = f"http://127.0.0.1:{gateway_port}"
    return env
