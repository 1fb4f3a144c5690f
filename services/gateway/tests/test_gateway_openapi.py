"""The gateway's own OpenAPI documents: served without a key, complete, and fuzzed by
Schemathesis against the /v1 app without finding a 5xx.

Behind the app: the conftest's echo stand-in of serving, and the real data service
(which scrubs captured chats) and evaluator (which takes them for review) in-process.
The files and fine-tuning paths, which need the trainer, are fuzzed in
test_gateway_fine_tuning.py; the admin API here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from starlette.applications import Starlette

from ownchat.config import ClientSettings
from ownchat_gateway.admin import create_admin_app
from ownchat_gateway.app import create_app
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.feedback.loop import FeedbackLoop
from ownchat_gateway.feedback.settings import CaptureSettings
from ownchat_gateway.feedback.store import CaptureStore
from ownchat_gateway.keys import KeyStore
from ownchat_gateway.limits import UsageStore
from ownchat_gateway.upstream import DataUpstream, EvaluatorUpstream, ServingUpstream

TOKEN = "gateway-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZED_ELSEWHERE = ("/files", "/fine_tuning")


@pytest.fixture
def v1_app(
    tmp_path: Path, data_address: str, evaluator: Any, echo_serving: Any
) -> Iterator[Starlette]:
    home = tmp_path / "home"
    gateway = GatewaySettings(home=home, token=TOKEN, capture_conversations=True)
    client = ClientSettings(
        home=home,
        token=TOKEN,
        serving_address=echo_serving.address,
        data_address=data_address,
        evaluator_address=evaluator.address,
        timeout_seconds=10,
    )
    data, queue = DataUpstream(client, TOKEN), EvaluatorUpstream(client, TOKEN)
    database = home / "gateway" / "gateway.db"
    context = GatewayContext(
        settings=gateway,
        token=TOKEN,
        upstream=ServingUpstream(client, TOKEN, 30),
        evaluator=queue,
        keys=KeyStore(database),
        usage=UsageStore(database),
        data=data,
        feedback=FeedbackLoop(
            CaptureStore(home / "gateway" / "captured.db"),
            data,
            queue,
            CaptureSettings(enabled=gateway.capture_conversations),
        ),
    )
    app = create_app(gateway)
    app.state.context = context
    yield app


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_gateway_v1_fuzzed_finds_no_server_error(v1_app: Starlette, mode: GenerationMode) -> None:
    # Schemathesis driven through Hypothesis directly: its pytest plugin does not run
    # under this pytest.
    schema = schemathesis.openapi.from_asgi("/openapi.json", v1_app)
    schema = schema.exclude(path_regex="|".join(f"^{p}" for p in FUZZED_ELSEWHERE))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/chat/completions", "/feedback"}
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            response = case.call_and_validate(
                headers=AUTH, checks=[schemathesis.checks.not_a_server_error]
            )
            statuses.append(response.status_code)

        call()
    # The requests reached the routes: some were answered, not all refused.
    assert any(status < 300 for status in statuses) or mode is GenerationMode.NEGATIVE


def test_gateway_openapi_documents_are_public_and_complete(tmp_path: Path) -> None:
    gateway = GatewaySettings(home=tmp_path, token=TOKEN)
    with TestClient(create_app(gateway)) as http:
        response = http.get("/openapi.json")  # no key
        assert response.status_code == 200
        document = response.json()
        assert http.get("/models").status_code == 401  # the rest still needs one
    paths = document["paths"]
    for path, method in [
        ("/chat/completions", "post"),
        ("/completions", "post"),
        ("/models", "get"),
        ("/feedback", "post"),
    ]:
        assert method in paths[path], path
    chat = paths["/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    with TestClient(create_admin_app(gateway)) as http:
        admin = http.get("/openapi.json").json()
    assert any(path.startswith("/api-keys") for path in admin["paths"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_gateway_admin_fuzzed_finds_no_server_error(
    context_factory: Any, mode: GenerationMode
) -> None:
    context = context_factory()
    app = create_admin_app(context.settings)
    app.state.context = context
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    statuses: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: Any) -> None:
            response = case.call_and_validate(
                headers=AUTH, checks=[schemathesis.checks.not_a_server_error]
            )
            statuses.append(response.status_code)

        call()
    assert any(status < 300 for status in statuses) or mode is GenerationMode.NEGATIVE
