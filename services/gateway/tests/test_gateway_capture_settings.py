"""The capture settings: which chats that do not say ``store`` are captured.

The rule on its own; the store on SQLite and PostgreSQL; the loop's cached read
(a change reaches other workers within a second); ``GET``/``PATCH
/admin/v1/capture-settings`` for admins only, with clear refusals; and a chat
through ``/v1`` captured, or not, as the settings say.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format

from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.gateway.v1 import gateway_pb2
from ownchat.testing import ManualClock
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.errors import GatewayError
from ownchat_gateway.feedback.loop import SETTINGS_TTL_SECONDS, FeedbackLoop
from ownchat_gateway.feedback.settings import CaptureSettings
from ownchat_gateway.feedback.store import CaptureStore
from ownchat_gateway.keys import Scope

NewKey = Callable[..., tuple[str, str]]
SETTINGS = "/admin/v1/capture-settings"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


class _Stub:
    """Scrubs nothing and enqueues nowhere; records what was captured."""

    def __init__(self) -> None:
        self.scrubbed: list[str] = []

    async def scrub_texts(self, texts: Sequence[str], request_id: str) -> list[str]:
        self.scrubbed.extend(texts)
        return list(texts)

    async def enqueue_review_item(self, item: evaluator_pb2.ReviewItem, request_id: str) -> str:
        return ""


# --- the rule ---------------------------------------------------------------------------


def test_a_request_that_says_store_decides_for_itself() -> None:
    for settings in (CaptureSettings(enabled=True), CaptureSettings(enabled=False)):
        assert settings.captures(True, "chatcmpl-1") is True
        assert settings.captures(False, "chatcmpl-1") is False


def test_the_settings_decide_for_the_others() -> None:
    assert CaptureSettings(enabled=False).captures(None, "chatcmpl-1") is False
    assert CaptureSettings(enabled=True).captures(None, "chatcmpl-1") is True
    assert CaptureSettings(enabled=True, sample_percent=0).captures(None, "chatcmpl-1") is False
    ids = [f"chatcmpl-{index}" for index in range(4000)]
    sampled = [i for i in ids if CaptureSettings(enabled=True, sample_percent=10).captures(None, i)]
    # A 10% share of 4000 is 400, with a standard deviation of 19.
    assert 320 < len(sampled) < 480
    # The same reply is in or out whichever worker asks.
    again = [i for i in ids if CaptureSettings(enabled=True, sample_percent=10).captures(None, i)]
    assert sampled == again
    # A larger share keeps every reply a smaller one took.
    wider = {i for i in ids if CaptureSettings(enabled=True, sample_percent=50).captures(None, i)}
    assert set(sampled) <= wider


@pytest.mark.parametrize("percent", [-1, 101])
def test_a_share_outside_0_to_100_is_refused(percent: int) -> None:
    with pytest.raises(GatewayError, match="sample_percent: must be from 0 to 100"):
        CaptureSettings(enabled=True, sample_percent=percent)


# --- the store and the loop ----------------------------------------------------------------


@pytest.fixture
def capture_store(store_location: Path | str) -> Iterator[CaptureStore]:
    store = CaptureStore(store_location, clock=lambda: 1_700_000_000.0)
    yield store
    store.close()


def test_the_store_keeps_one_set_of_settings(capture_store: CaptureStore) -> None:
    assert capture_store.capture_settings() is None
    capture_store.set_capture_settings(enabled=True, sample_percent=25, updated_by="ak_1")
    capture_store.set_capture_settings(enabled=False, sample_percent=30, updated_by="operator")
    assert capture_store.capture_settings() == CaptureSettings(
        enabled=False, sample_percent=30, update_time=1_700_000_000.0, updated_by="operator"
    )


def test_every_worker_follows_a_change_within_a_second(capture_store: CaptureStore) -> None:
    clock = ManualClock()
    default = CaptureSettings(enabled=True)
    here = FeedbackLoop(capture_store, _Stub(), _Stub(), default, clock=clock)
    elsewhere = FeedbackLoop(capture_store, _Stub(), _Stub(), default, clock=clock)
    assert elsewhere.settings() == default

    changed = here.update_settings(enabled=None, sample_percent=5, updated_by="ak_ops")
    assert (changed.enabled, changed.sample_percent, changed.updated_by) == (True, 5, "ak_ops")
    assert here.settings() == changed
    # The other worker read a moment ago: it goes on with that until the read is stale.
    assert elsewhere.settings() == default
    clock.advance(SETTINGS_TTL_SECONDS)
    assert elsewhere.settings() == changed

    # None keeps a field as it is.
    off = elsewhere.update_settings(enabled=False, sample_percent=None, updated_by="operator")
    assert (off.enabled, off.sample_percent) == (False, 5)


# --- the admin routes ----------------------------------------------------------------------


@pytest.fixture
def capturing(context: GatewayContext, tmp_path: Path) -> FeedbackLoop:
    """The context with a capture store and the gateway's default of capturing nothing."""
    store = CaptureStore(tmp_path / "home" / "gateway" / "captured.db")
    context.feedback = FeedbackLoop(store, _Stub(), _Stub())
    return context.feedback


def _settings_of(response: Any) -> gateway_pb2.CaptureSettings:
    assert response.status_code == 200, response.text
    return json_format.ParseDict(response.json(), gateway_pb2.GetCaptureSettingsResponse()).settings


def test_admins_read_and_change_the_settings(
    http: TestClient, context: GatewayContext, capturing: FeedbackLoop, new_key: NewKey
) -> None:
    key_id, secret = new_key(context, "ops", Scope.ADMIN)
    first = http.get(SETTINGS, headers=bearer(secret))
    assert first.json() == {
        "settings": {"enabled": False, "samplePercent": 100, "datasetName": "", "updatedBy": ""}
    }

    changed = http.patch(
        SETTINGS, json={"settings": {"enabled": True, "samplePercent": 20}}, headers=bearer(secret)
    )
    settings = _settings_of(changed)
    assert (settings.enabled, settings.sample_percent, settings.updated_by) == (True, 20, key_id)
    assert abs(settings.update_time.seconds - time.time()) < 60

    # Only the fields named change; either JSON spelling names one.
    half = http.patch(SETTINGS, json={"settings": {"sample_percent": 50}}, headers=bearer(secret))
    assert (_settings_of(half).enabled, _settings_of(half).sample_percent) == (True, 50)
    operator = http.patch(
        SETTINGS, json={"settings": {"enabled": False}}, headers=bearer(context.token)
    )
    assert _settings_of(operator).updated_by == "operator"
    now = _settings_of(http.get(SETTINGS, headers=bearer(secret)))
    assert (now.enabled, now.sample_percent, now.updated_by) == (False, 50, "operator")
    assert capturing.settings(fresh=True).sample_percent == 50


def test_only_admins_see_or_change_the_settings(
    http: TestClient, context: GatewayContext, capturing: FeedbackLoop, new_key: NewKey
) -> None:
    _, secret = new_key(context, "bot", Scope.CHAT, Scope.REVIEW, Scope.FINE_TUNE)
    assert http.get(SETTINGS, headers=bearer(secret)).status_code == 403
    body = {"settings": {"enabled": True}}
    assert http.patch(SETTINGS, json=body, headers=bearer(secret)).status_code == 403
    assert http.patch(SETTINGS, json=body).status_code == 401
    assert capturing.settings(fresh=True) == CaptureSettings(enabled=False)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"settings": {"samplePercent": 101}}, "settings.sample_percent: must be from 0 to 100"),
        ({"settings": {"samplePercent": -5}}, "settings.sample_percent: must be from 0 to 100"),
        ({"settings": {"datasetName": "live-chats"}}, "settings.dataset_name: must be empty"),
        ({"settings": {}}, "name at least one of enabled and samplePercent"),
        ({}, "name at least one of enabled and samplePercent"),
        ({"settings": {"enabled": "yes"}}, "not a valid UpdateCaptureSettingsRequest"),
        ({"settings": {"sampleShare": 3}}, "not a valid UpdateCaptureSettingsRequest"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_settings_are_refused_and_nothing_changes(
    http: TestClient, context: GatewayContext, capturing: FeedbackLoop, body: Any, says: str
) -> None:
    response = http.patch(SETTINGS, json=body, headers=bearer(context.token))
    assert response.status_code == 400
    error = response.json()["error"]
    assert says in error["message"]
    assert error["type"] == "invalid_request_error"
    assert capturing.store.capture_settings() is None


def test_a_gateway_without_a_capture_store_says_so(
    http: TestClient, context: GatewayContext
) -> None:
    response = http.get(SETTINGS, headers=bearer(context.token))
    assert response.status_code == 400
    assert "does not capture chats" in response.json()["error"]["message"]


def test_chats_follow_the_settings(
    context_factory: Callable[..., GatewayContext],
    edge: Callable[[GatewayContext], Any],
    echo_serving: Any,
    tmp_path: Path,
) -> None:
    """Through /v1 over the echo serving: nothing by default, then what an admin turns on;
    a request's ``store`` wins either way."""
    context = context_factory(serving_address=echo_serving.address)
    store = CaptureStore(tmp_path / "home" / "gateway" / "captured.db")
    context.feedback = FeedbackLoop(store, _Stub(), _Stub())
    with TestClient(edge(context)) as http:

        def chat(text: str, **extra: Any) -> str:
            body = {"model": "", "messages": [{"role": "user", "content": text}], **extra}
            response = http.post("/v1/chat/completions", json=body, headers=bearer(context.token))
            assert response.status_code == 200, response.text
            response_id: str = response.json()["id"]
            return response_id

        quiet = chat("not by default")
        asked = chat("asked for", store=True)
        turned_on = http.patch(
            SETTINGS, json={"settings": {"enabled": True}}, headers=bearer(context.token)
        )
        assert turned_on.status_code == 200
        loud = chat("captured now")
        private = chat("still private", store=False)

        deadline = time.monotonic() + 20
        while store.chat(asked) is None or store.chat(loud) is None:
            assert time.monotonic() < deadline, "the chats were not captured"
            time.sleep(0.05)
        assert store.chat(loud).reply == "Answer: captured now"  # type: ignore[union-attr]
        assert store.chat(quiet) is None and store.chat(private) is None


def test_the_cli_shows_and_sets_the_settings(
    context: GatewayContext,
    capturing: FeedbackLoop,
    edge: Callable[[GatewayContext], Any],
    serve_app: Callable[[Any], Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ownchat capture show|set`` against the admin routes, served by uvicorn."""
    from typer.testing import CliRunner

    from ownchat.cli.main import app as cli

    runner = CliRunner()

    def said(result: Any) -> str:
        assert result.exit_code == 0, result.output
        # Rich wraps lines at the terminal's width.
        return " ".join(result.output.split())

    with serve_app(edge(context)) as url:
        monkeypatch.delenv("OWNCHAT_CONFIG", raising=False)
        monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path / "cli-home"))
        monkeypatch.setenv("OWNCHAT_TOKEN", context.token)
        monkeypatch.setenv("OWNCHAT_GATEWAY_URL", url)

        shown = said(runner.invoke(cli, ["capture", "show"]))
        assert "capture off" in shown and "the gateway's default" in shown

        on = said(runner.invoke(cli, ["capture", "set", "--on", "--sample", "15"]))
        assert "capture on for 15% of chats" in on and "by operator" in on
        assert capturing.settings(fresh=True).sample_percent == 15

        off = said(runner.invoke(cli, ["capture", "set", "--off"]))
        assert "capture off" in off
        assert capturing.settings(fresh=True).enabled is False

        for wrong in (["capture", "set"], ["capture", "set", "--sample", "150"]):
            refused = runner.invoke(cli, wrong)
            assert refused.exit_code == 2, refused.output
        assert capturing.settings(fresh=True).sample_percent == 15

        monkeypatch.setenv("OWNCHAT_TOKEN", "not-the-token")
        unauthorised = runner.invoke(cli, ["capture", "show"])
        assert unauthorised.exit_code == 1 and "401" in unauthorised.output
