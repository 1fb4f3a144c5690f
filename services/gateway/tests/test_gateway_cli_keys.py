"""``ownchat keys create / list / revoke`` against the gateway's admin endpoints,
served by uvicorn on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from typer.testing import CliRunner

from ownchat.cli.main import app as cli
from ownchat_gateway.context import GatewayContext

Edge = Callable[[GatewayContext], Starlette]
Serve = Callable[[Starlette], AbstractContextManager[str]]


@pytest.fixture
def gateway_url(
    context: GatewayContext,
    edge: Edge,
    serve_app: Serve,
    token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    with serve_app(edge(context)) as url:
        for name in ("OWNCHAT_CONFIG",):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path / "cli-home"))
        monkeypatch.setenv("OWNCHAT_TOKEN", token)
        monkeypatch.setenv("OWNCHAT_GATEWAY_URL", url)
        yield url


def test_gateway_cli_creates_lists_and_revokes_keys(gateway_url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli,
        ["keys", "create", "--name", "alice", "--scope", "review", "--scope", "chat"],
    )
    assert created.exit_code == 0, created.output
    secret = created.output.strip().splitlines()[-1]
    assert secret.startswith("oc-ak_")
    key_id = secret.split("-")[1]
    assert f"created key {key_id}" in created.output and "chat, review" in created.output
    me = httpx.get(f"{gateway_url}/review/api/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.json() == {"reviewer": key_id, "name": "alice"}

    only = runner.invoke(
        cli, ["keys", "create", "--name", "ci", "--scope", "fine-tune", "--secret-only"]
    )
    assert only.exit_code == 0, only.output
    assert only.output.strip().startswith("oc-ak_") and len(only.output.strip().split()) == 1

    listed = runner.invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert key_id in listed.output and "alice" in listed.output and "fine-tune" in listed.output
    assert secret not in listed.output

    revoked = runner.invoke(cli, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked key {key_id}" in revoked.output
    me = httpx.get(f"{gateway_url}/review/api/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 401

    missing = runner.invoke(cli, ["keys", "revoke", "ak_nope"])
    assert missing.exit_code == 1 and "404" in missing.output


def test_gateway_cli_reports_refusals(gateway_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    bad_scope = runner.invoke(cli, ["keys", "create", "--name", "a", "--scope", "everything"])
    assert bad_scope.exit_code != 0
    monkeypatch.setenv("OWNCHAT_TOKEN", "not-the-token")
    refused = runner.invoke(cli, ["keys", "list"])
    assert refused.exit_code == 1 and "401" in refused.output
    monkeypatch.setenv("OWNCHAT_GATEWAY_URL", "http://127.0.0.1:9")
    unreachable = runner.invoke(cli, ["keys", "list"])
    assert unreachable.exit_code == 1 and "cannot reach the gateway" in unreachable.output


def test_gateway_cli_sets_a_keys_limits(gateway_url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli,
        [
            "keys", "create", "--name", "bot", "--scope", "chat",
            "--rpm", "2", "--tpm", "unlimited", "--token-quota", "5000", "--secret-only",
        ],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    secret = created.output.strip()
    listed = runner.invoke(cli, ["keys", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "bot" in line)
    assert "2 rpm, unlimited tpm, 5000 tokens/day" in row
    # The limit holds at once: a third request in the minute is refused.
    statuses = [
        httpx.get(f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
        for _ in range(3)
    ]
    assert [s.status_code for s in statuses] == [503, 503, 429]
    assert statuses[2].headers["x-ratelimit-limit-requests"] == "2"

    bad = runner.invoke(cli, ["keys", "create", "--name", "x", "--scope", "chat", "--rpm", "-5"])
    assert bad.exit_code != 0 and "unlimited" in bad.output
    default = runner.invoke(
        cli, ["keys", "create", "--name", "d", "--scope", "chat", "--tpm", "default"]
    )
    assert default.exit_code == 0, default.output
