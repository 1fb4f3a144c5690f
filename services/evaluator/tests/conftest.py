"""Shared fixtures of the evaluator's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import grpc
import pytest

from ownchat.evaluator.v1 import evaluator_pb2_grpc
from ownchat.testing import ManualClock, build_tiny_chat_model, loopback_channel
from ownchat_evaluator.core import EvaluatorCore
from ownchat_evaluator.review.core import ReviewQueue
from ownchat_evaluator.review.rpcs import ReviewRpcs
from ownchat_evaluator.review.store import ReviewStore
from ownchat_evaluator.servicer import EvaluatorServicer
from ownchat_evaluator.store import EvalStore

# The token the review server below demands: the test modules send their own TOKEN of
# the same value (a conftest cannot be imported by name here).
REVIEW_TOKEN = "test-token"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random chat model, built once per test module (read only)."""
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


def _no_lookups(name: str) -> Path:
    raise AssertionError(f"the review queue looked up {name}")


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[evaluator_pb2_grpc.EvaluatorServiceStub]:
    """The evaluator's servicer with a fresh review queue (600 s leases) on a loopback
    gRPC server behind the runtime's token check; it never looks up models or data."""
    eval_store = EvalStore(tmp_path / "evaluator.db")
    core = EvaluatorCore(eval_store, models=_no_lookups, datasets=_no_lookups)
    review_store = ReviewStore(tmp_path / "reviews.db")
    servicer = EvaluatorServicer(core, ReviewRpcs(ReviewQueue(review_store, lease_seconds=600)))
    try:
        with evaluator_on_loopback(servicer, REVIEW_TOKEN) as stub:
            yield stub
    finally:
        core.close()
        eval_store.close()
        review_store.close()


@contextmanager
def evaluator_on_loopback(
    servicer: EvaluatorServicer, token: str
) -> Iterator[evaluator_pb2_grpc.EvaluatorServiceStub]:
    """The servicer on a loopback gRPC server behind the token check, and a stub of it."""

    def add(server: grpc.Server) -> None:
        evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(servicer, server)  # type: ignore[arg-type]

    with loopback_channel(add, token) as channel:
        yield evaluator_pb2_grpc.EvaluatorServiceStub(channel)


ServeEvaluator = Callable[
    [EvaluatorServicer, str], AbstractContextManager[evaluator_pb2_grpc.EvaluatorServiceStub]
]


@pytest.fixture(scope="session")
def serve_evaluator() -> ServeEvaluator:
    """``with serve_evaluator(servicer, token) as stub``: see :func:`evaluator_on_loopback`."""
    return evaluator_on_loopback


@pytest.fixture
def clock() -> ManualClock:
    """The review queue's time, moved by the test (to let leases expire)."""
    return ManualClock()


@pytest.fixture
def store(store_location: Path | str) -> Iterator[ReviewStore]:
    """A review store on a SQLite file, then on a PostgreSQL database."""
    opened = ReviewStore(store_location)
    yield opened
    opened.close()
