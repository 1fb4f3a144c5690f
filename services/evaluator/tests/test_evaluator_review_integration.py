"""The evaluator as a real process: a burst of enqueues, leases and reviews
from several threads, a kill -9 in the middle of it, a restart, and then every
acknowledged enqueue and review is there and no finished item is leased again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ownchat.client import OwnchatClient
from ownchat.common.v1 import common_pb2
from ownchat.config import ClientSettings
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE_SECONDS = 3
THREADS = 3
# Kill once this many reviews were acknowledged, or after this long.
KILL_AFTER_REVIEWS = 40
KILL_AFTER_SECONDS = 20.0


@dataclass
class Evaluator:
    """One evaluator process over a home that outlives it."""

    home: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OWNCHAT_")}
        env.update(
            {
                "OWNCHAT_HOME": str(self.home),
                "OWNCHAT_EVALUATOR_PORT": str(self.port),
                "OWNCHAT_EVALUATOR_METRICS_PORT": str(free_port()),
                "OWNCHAT_EVALUATOR_TORCH_THREADS": "1",
                "OWNCHAT_EVALUATOR_REVIEW_LEASE_SECONDS": str(LEASE_SECONDS),
                # Nothing here calls the data service; it must not be a real one.
                "OWNCHAT_DATA_ADDRESS": f"127.0.0.1:{free_port()}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def start(self) -> None:
        log = (self.home / "evaluator.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ownchat_evaluator"],
            env=self.env(),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.home / "evaluator.log").read_text()
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise AssertionError("the evaluator did not become healthy")

    def kill(self) -> None:
        """SIGKILL: no drain, no shutdown hook, nothing flushed on the way out."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def client(self) -> OwnchatClient:
        settings = ClientSettings(home=self.home, evaluator_address=f"127.0.0.1:{self.port}")
        return OwnchatClient.from_settings(settings)


@pytest.fixture
def evaluator(tmp_path: Path) -> Iterator[Evaluator]:
    home = tmp_path / "home"
    home.mkdir()
    running = Evaluator(home)
    try:
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            running.process.kill()
            running.process.wait(timeout=30)


@dataclass
class Acks:
    """What the server acknowledged before it died, from every thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    items: set[str] = field(default_factory=set)
    # review id -> (item id, reviewer, rating)
    reviews: dict[str, tuple[str, str, int]] = field(default_factory=dict)


def burst(client: OwnchatClient, worker: int, acks: Acks, stop: threading.Event) -> None:
    """Enqueue one item, lease the next, review it; again, until the server dies."""
    reviewer = f"reviewer-{worker}"
    count = 0
    try:
        while not stop.is_set():
            count += 1
            item = evaluator_pb2.ReviewItem(
                kind=evaluator_pb2.REVIEW_KIND_RATING,
                context=[
                    common_pb2.ChatMessage(
                        role=common_pb2.ROLE_USER, content=f"question {worker}-{count}"
                    )
                ],
                reply_a=f"answer {worker}-{count}",
                source=f"gateway:resp_{worker}_{count}",
                priority=count % 3,
            )
            ids = client.evaluator.EnqueueReviewItems(
                evaluator_pb2.EnqueueReviewItemsRequest(items=[item]), timeout=10
            ).item_ids
            with acks.lock:
                acks.items.update(ids)
            leased = client.evaluator.NextReviewItem(
                evaluator_pb2.NextReviewItemRequest(reviewer=reviewer), timeout=10
            )
            if not leased.HasField("item"):
                continue
            rating = 1 + count % 5
            review_id = client.evaluator.SubmitReview(
                evaluator_pb2.SubmitReviewRequest(
                    item_id=leased.item.id, reviewer=reviewer, rating=rating
                ),
                timeout=10,
            ).review_id
            with acks.lock:
                acks.reviews[review_id] = (leased.item.id, reviewer, rating)
    except grpc.RpcError as error:
        # The kill: anything in flight is unknown, never acknowledged.
        if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise


def all_reviews(client: OwnchatClient) -> list[evaluator_pb2.Review]:
    reviews: list[evaluator_pb2.Review] = []
    token = ""
    while True:
        page = client.evaluator.ListReviews(
            evaluator_pb2.ListReviewsRequest(page_size=500, page_token=token)
        )
        reviews += page.reviews
        token = page.next_page_token
        if not token:
            return reviews


def test_kill_during_a_burst_loses_no_acknowledged_review(evaluator: Evaluator) -> None:
    evaluator.start()
    acks = Acks()
    stop = threading.Event()
    client = evaluator.client()
    workers = [
        threading.Thread(target=burst, args=(client, n, acks, stop), daemon=True)
        for n in range(THREADS)
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + KILL_AFTER_SECONDS
    while time.monotonic() < deadline:
        with acks.lock:
            if len(acks.reviews) >= KILL_AFTER_REVIEWS:
                break
        time.sleep(0.05)
    evaluator.kill()
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    client.close()
    assert len(acks.reviews) >= 5, "the burst acknowledged too little to test anything"

    evaluator.start()
    client = evaluator.client()
    try:
        stored = {r.id: r for r in all_reviews(client)}
        for review_id, (item_id, reviewer, rating) in acks.reviews.items():
            assert review_id in stored, f"acknowledged review {review_id} was lost"
            review = stored[review_id]
            assert (review.item_id, review.reviewer, review.rating) == (item_id, reviewer, rating)
        reviewed = [r.item_id for r in stored.values()]
        assert len(reviewed) == len(set(reviewed)), "an item got more reviews than it wanted"
        finished = set(reviewed)

        # Leases held by the dead burst run out; then everything still open is
        # offered, and nothing finished is.
        time.sleep(LEASE_SECONDS + 0.5)
        drained: list[str] = []
        while True:
            leased = client.evaluator.NextReviewItem(
                evaluator_pb2.NextReviewItemRequest(reviewer="after-restart")
            )
            if not leased.HasField("item"):
                break
            assert leased.item.id not in finished, f"finished item {leased.item.id} leased again"
            drained.append(leased.item.id)
            client.evaluator.SubmitReview(
                evaluator_pb2.SubmitReviewRequest(
                    item_id=leased.item.id, reviewer="after-restart", rating=3
                )
            )
        assert len(drained) == len(set(drained))
        missing = acks.items - finished - set(drained)
        assert not missing, f"acknowledged items lost: {sorted(missing)}"
        stats = client.evaluator.GetReviewStats(evaluator_pb2.GetReviewStatsRequest())
        (counts,) = stats.counts
        assert counts.open_items == counts.leased_items == 0
        assert counts.done_items == len(finished) + len(drained)
    finally:
        client.close()
