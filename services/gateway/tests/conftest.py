"""Fixtures of the gateway's tests (test modules cannot import this file by name:
another conftest sits on the path, so helpers come as fixtures).

- ``http`` / ``review_http``: TestClients of the gateway's three apps mounted as
  the BentoML service mounts them (``/v1``, ``/admin/v1``, ``/review``);
- ``evaluator``: the real evaluator servicer with its review queue on a loopback
  gRPC server, behind ownchat's token interceptor, on a clock the test moves;
- ``new_key``: a key made straight in a context's store;
- ``context_factory``: contexts with other settings (limits, CORS, prompt sizes)
  or a serving service behind them;
- ``serve_app`` / ``gateway_process``: uvicorn in a thread, and the real
  ``python -m ownchat_gateway`` as a process;
- ``data_address``: the real data service in-process (module-wide);
- ``echo_serving``: a stand-in serving service on loopback that answers
  "Answer: <question>" (and UNAVAILABLE to its ``failing_text``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount

from ownchat.config import ClientSettings
from ownchat.evaluator.v1 import evaluator_pb2_grpc
from ownchat.interceptors import ServerInterceptor
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat.testing import ManualClock, free_port
from ownchat_gateway.admin import create_admin_app
from ownchat_gateway.app import create_app
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.keys import KeyStore, NewApiKey, Scope
from ownchat_gateway.limits import UsageStore
from ownchat_gateway.review import create_review_app
from ownchat_gateway.upstream import EvaluatorUpstream, ServingUpstream

TOKEN = "gateway-test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
LEASE_SECONDS = 600.0


@dataclass
class Evaluator:
    """A running evaluator: where it listens, a client of it, and its clock."""

    address: str
    stub: evaluator_pb2_grpc.EvaluatorServiceStub
    clock: ManualClock


@pytest.fixture
def evaluator(tmp_path: Path) -> Iterator[Evaluator]:
    """The evaluator's own servicer and review queue, as ``python -m ownchat_evaluator``
    wires them, on a threaded gRPC server on a free loopback port."""
    pytest.importorskip("ownchat_evaluator", reason="the evaluator is not installed")
    from ownchat_evaluator.core import EvaluatorCore
    from ownchat_evaluator.review.core import ReviewQueue
    from ownchat_evaluator.review.rpcs import ReviewRpcs
    from ownchat_evaluator.review.store import ReviewStore
    from ownchat_evaluator.servicer import EvaluatorServicer
    from ownchat_evaluator.store import EvalStore

    def no_lookups(name: str) -> Path:
        raise AssertionError(f"the review queue looked up {name}")

    state = tmp_path / "evaluator"
    eval_store = EvalStore(state / "evaluator.db")
    core = EvaluatorCore(eval_store, models=no_lookups, datasets=no_lookups)
    review_store = ReviewStore(state / "reviews.db")
    clock = ManualClock(time.time())
    queue = ReviewQueue(review_store, lease_seconds=LEASE_SECONDS, clock=clock)
    servicer = EvaluatorServicer(core, ReviewRpcs(queue))  # type: ignore[abstract]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ServerInterceptor(TOKEN)]
    )
    evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(servicer, server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Evaluator(
            f"127.0.0.1:{port}", evaluator_pb2_grpc.EvaluatorServiceStub(channel), clock
        )
    finally:
        channel.close()
        server.stop(None).wait()
        core.close()
        eval_store.close()
        review_store.close()


def make_context(
    home: Path,
    evaluator_address: str,
    serving_address: str | None = None,
    token: str = TOKEN,
    **settings: object,
) -> GatewayContext:
    """A context as the service makes it, against these addresses (by default serving is
    absent), with ``settings`` overriding the gateway's defaults."""
    gateway_settings = GatewaySettings(home=home, token=token, **settings)  # type: ignore[arg-type]
    client = ClientSettings(
        home=home,
        token=token,
        evaluator_address=evaluator_address,
        serving_address=serving_address or f"127.0.0.1:{free_port()}",
        timeout_seconds=5,
    )
    database = home / "gateway" / "gateway.db"
    return GatewayContext(
        settings=gateway_settings,
        token=token,
        # A real engine behind (when given) may take longer than the stand-ins' 5 s.
        upstream=ServingUpstream(client, token, 30 if serving_address else 5),
        evaluator=EvaluatorUpstream(client, token),
        keys=KeyStore(database),
        usage=UsageStore(database),
    )


def edge_app(context: GatewayContext) -> Starlette:
    """The three apps under their mount points, sharing the context; closes it on shutdown."""
    apps = {
        "/v1": create_app(context.settings),
        "/admin/v1": create_admin_app(context.settings),
        "/review": create_review_app(context.settings),
    }
    for app in apps.values():
        app.state.context = context

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await context.close()

    return Starlette(routes=[Mount(path, app=app) for path, app in apps.items()], lifespan=lifespan)


@pytest.fixture
def context(tmp_path: Path) -> GatewayContext:
    """A context with no evaluator listening."""
    return make_context(tmp_path / "home", f"127.0.0.1:{free_port()}")


ContextFactory = Callable[..., GatewayContext]


@pytest.fixture
def context_factory(tmp_path: Path) -> ContextFactory:
    """``context_factory(serving_address=None, token=TOKEN, **settings)``: a context
    with those gateway settings and no evaluator listening."""

    def factory(
        serving_address: str | None = None, token: str = TOKEN, **settings: object
    ) -> GatewayContext:
        return make_context(
            tmp_path / "home",
            f"127.0.0.1:{free_port()}",
            serving_address=serving_address,
            token=token,
            **settings,
        )

    return factory


@pytest.fixture
def review_context(tmp_path: Path, evaluator: Evaluator) -> GatewayContext:
    """A context whose evaluator is the running one."""
    return make_context(tmp_path / "home", evaluator.address)


@pytest.fixture
def token() -> str:
    """The ownchat token of the gateway and the evaluator under test."""
    return TOKEN


@pytest.fixture
def http(context: GatewayContext) -> Iterator[TestClient]:
    """HTTP to the mounted apps, no evaluator behind them."""
    with TestClient(edge_app(context)) as client:
        yield client


@pytest.fixture
def review_http(review_context: GatewayContext) -> Iterator[TestClient]:
    """HTTP to the mounted apps, the running evaluator behind them."""
    with TestClient(edge_app(review_context)) as client:
        yield client


NewKey = Callable[..., tuple[str, str]]


def create_key(context: GatewayContext, name: str, *scopes: Scope) -> tuple[str, str]:
    """A key made straight in the store: (id, secret)."""
    created = context.keys.create(NewApiKey(name=name, scopes=scopes))
    return created.key.id, created.secret


@pytest.fixture
def new_key() -> NewKey:
    """``new_key(context, name, *scopes) -> (id, secret)``."""
    return create_key


@pytest.fixture
def edge() -> Callable[[GatewayContext], Starlette]:
    """``edge(context)``: the mounted apps, to serve."""
    return edge_app


@contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """uvicorn on a free loopback port in a thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in 20 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def serve_app() -> Callable[[Starlette], AbstractContextManager[str]]:
    """``with serve_app(app) as url``: uvicorn in a thread."""
    return serve_in_thread


@contextmanager
def run_gateway(home: Path, env: dict[str, str]) -> Iterator[str]:
    """``python -m ownchat_gateway`` on a free port until ready; yields its URL.

    Afterwards no process of it may remain.
    """
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OWNCHAT_")},
        "OWNCHAT_HOME": str(home),
        "OWNCHAT_GATEWAY_PORT": str(port),
        **env,
    }
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "gateway.log"
    url = f"http://127.0.0.1:{port}"
    family: list[psutil.Process] = []
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ownchat_gateway"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "gateway not ready in 60 s"
                time.sleep(0.1)
            family = [
                psutil.Process(process.pid),
                *psutil.Process(process.pid).children(recursive=True),
            ]
            yield url
            process.terminate()
            assert process.wait(timeout=30) == 0, log_path.read_text()
            _, alive = psutil.wait_procs(family, timeout=15)
            assert not alive, f"left behind: {alive}"
        finally:
            for member in family:
                if member.is_running():
                    member.kill()
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def gateway_process() -> Callable[[Path, dict[str, str]], AbstractContextManager[str]]:
    """``with gateway_process(home, env) as url``: the real gateway as a process."""
    return run_gateway


class EchoServing(serving_pb2_grpc.ServingServiceServicer):
    """Serving as the gateway sees it: replies "Answer: <question>" (the last message, or
    the raw prompt) in two pieces, with usage; UNAVAILABLE when asked ``failing_text``.
    Records the requests."""

    failing_text = "please fail"

    def __init__(self) -> None:
        self.address = ""
        self.requests: list[serving_pb2.GenerateRequest] = []

    def Generate(  # noqa: N802 - gRPC's method name
        self, request: serving_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[serving_pb2.GenerateResponse]:
        self.requests.append(request)
        question = request.messages[-1].content if request.messages else request.prompt
        if question == self.failing_text:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no engine")
        yield serving_pb2.GenerateResponse(text="Answer: ", model_id="mv_live")
        yield serving_pb2.GenerateResponse(
            text=question,
            model_id="mv_live",
            finish_reason=serving_pb2.FINISH_REASON_STOP,
            usage=serving_pb2.Usage(prompt_tokens=3, completion_tokens=2),
        )

    def ListDeployments(  # noqa: N802 - gRPC's method name
        self, request: serving_pb2.ListDeploymentsRequest, context: grpc.ServicerContext
    ) -> serving_pb2.ListDeploymentsResponse:
        live = serving_pb2.Deployment(
            id="dep_1", model_id="mv_live", state=serving_pb2.DEPLOYMENT_STATE_LIVE
        )
        return serving_pb2.ListDeploymentsResponse(deployments=[live])


@pytest.fixture
def echo_serving() -> Iterator[EchoServing]:
    """The echo stand-in of serving on a free loopback port (``.address``)."""
    servicer = EchoServing()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, server)
    servicer.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield servicer
    server.stop(None).wait()


@pytest.fixture(scope="module")
def data_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The data service's own servicer (it scrubs captured chats), as ``python -m
    ownchat_data`` wires it, on a loopback gRPC server behind the token check."""
    pytest.importorskip("ownchat_data", reason="the data service is not installed")
    from ownchat.artifacts import ArtifactStore
    from ownchat.data.v1 import data_pb2_grpc
    from ownchat_data.core import DataCore
    from ownchat_data.servicer import DataServicer
    from ownchat_data.store import DataStore

    state = tmp_path_factory.mktemp("data")
    core = DataCore(
        DataStore(state / "data.db"),
        ArtifactStore(state / "artifacts"),
        max_upload_bytes=1 << 20,
        max_record_bytes=1 << 16,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ServerInterceptor(TOKEN)]
    )
    data_pb2_grpc.add_DataServiceServicer_to_server(DataServicer(core), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait()
