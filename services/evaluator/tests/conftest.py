"""Shared fixtures of the evaluator's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ownchat.testing import build_tiny_chat_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random chat model, built once per test module (read only)."""
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")
