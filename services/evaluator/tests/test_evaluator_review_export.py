"""Samples from, and feedback back into, a real data service on loopback:
conversations sampled from a chat dataset version become review items;
finished pairwise items become a preference dataset version and corrections
an SFT version, each sample leading back to its reviews through the lineage
the data service keeps."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import InvalidArgumentError
from ownchat.interceptors import ServerInterceptor
from ownchat_evaluator.review.core import DatasetSampleRequest, ExportRequest, ReviewQueue
from ownchat_evaluator.review.data_client import DataServiceFeedback
from ownchat_evaluator.review.model import NewItem, ReviewInput, ReviewKind, Turn
from ownchat_evaluator.review.store import ReviewStore

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ownchat_data") is None, reason="the data service is not installed"
)

TOKEN = "test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
TOPICS = [
    ("How do I reset my password?", "Open settings and choose reset."),
    ("Can I change my billing date?", "Yes, billing dates move once a year."),
    ("Where is my parcel?", "Tracking lives under orders."),
    ("Do you ship to Norway?", "We ship across Scandinavia."),
    ("Is there a student discount?", "Students get twenty percent off."),
    ("How long is the warranty?", "Two years on all hardware."),
    ("Can I return opened software?", "Opened software cannot be returned."),
    ("What payment cards are accepted?", "Visa and Mastercard are accepted."),
]


@dataclass
class World:
    """A data service, its artifact store and a queue that talks to it."""

    data: data_pb2_grpc.DataServiceStub
    artifacts: ArtifactStore
    queue: ReviewQueue


@pytest.fixture
def world(tmp_path: Path, store_location: Path | str) -> Iterator[World]:
    from ownchat_data.core import DataCore
    from ownchat_data.servicer import DataServicer
    from ownchat_data.store import DataStore

    artifacts = ArtifactStore(tmp_path / "artifacts")
    data_store = DataStore(tmp_path / "data.db")
    core = DataCore(data_store, artifacts, max_upload_bytes=1 << 24, max_record_bytes=1 << 20)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ServerInterceptor(TOKEN)]
    )
    data_pb2_grpc.add_DataServiceServicer_to_server(DataServicer(core), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    settings = ClientSettings(home=tmp_path, data_address=f"127.0.0.1:{port}")
    # The review queue's store on both engines; the data service's stays a file.
    review_store = ReviewStore(store_location)
    queue = ReviewQueue(review_store, data=DataServiceFeedback(settings, TOKEN, artifacts))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield World(data_pb2_grpc.DataServiceStub(channel), artifacts, queue)
    finally:
        channel.close()
        server.stop(None).wait()
        review_store.close()
        data_store.close()


def upload_chats(world: World) -> data_pb2.DatasetVersion:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You are the support desk."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        for question, answer in TOPICS
    ]
    header = data_pb2.UploadHeader(
        dataset_name="support",
        file_name="support.jsonl",
        format=data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL,
        validation_fraction=0.25,
    )
    requests = [
        data_pb2.UploadDatasetVersionRequest(header=header),
        data_pb2.UploadDatasetVersionRequest(chunk="\n".join(lines).encode()),
    ]
    version = world.data.UploadDatasetVersion(iter(requests), metadata=AUTH).dataset_version
    assert version.stats.samples == len(TOPICS)
    return version


def source_line(world: World, version: data_pb2.DatasetVersion, record: int) -> dict[str, object]:
    """The uploaded file's line that a sample's lineage names."""
    lines = world.artifacts.path(version.source.digest).read_text().splitlines()
    value: dict[str, object] = json.loads(lines[record - 1])
    return value


def test_a_seeded_sample_becomes_review_items(world: World) -> None:
    version = upload_chats(world)
    version_id = version.id
    request = DatasetSampleRequest(
        version_id, ReviewKind.RATING, count=3, seed=11, validation=False, reviews_wanted=2
    )
    ids, skipped = world.queue.enqueue_dataset_sample(request)
    assert (len(ids), skipped) == (3, 0)
    # The same seed draws the same conversations: the same items come back.
    assert world.queue.enqueue_dataset_sample(request) == (ids, 0)
    item = world.queue.get_item(ids[0])
    assert item.source == f"dataset:{version_id}"
    assert [t.role for t in item.context] == ["system", "user"]
    assert (item.context[1].content, item.reply_a) in TOPICS
    assert item.reviews_wanted == 2
    everything, _ = world.queue.enqueue_dataset_sample(
        DatasetSampleRequest(version_id, ReviewKind.CORRECTION, count=100, seed=1)
    )
    assert 0 < len(everything) == version.stats.validation_samples  # the whole split
    with pytest.raises(InvalidArgumentError) as caught:
        world.queue.enqueue_dataset_sample(
            DatasetSampleRequest(version_id, ReviewKind.PAIRWISE, count=0)
        )
    assert {v.field for v in caught.value.violations} == {"kind", "count"}


def review_pair(world: World, item_id: str, reviewer: str, pick: str) -> str:
    leased = world.queue.next_item(reviewer, ReviewKind.PAIRWISE)
    assert leased is not None and leased.item.id == item_id
    side = pick if pick == "tie" else ("a" if leased.shown_replies[0].endswith(pick) else "b")
    return world.queue.submit(ReviewInput(item_id, reviewer, preferred=side)).id


def test_feedback_is_exported_with_lineage_to_its_reviews(world: World) -> None:
    chats_version = upload_chats(world).id
    pairs = [
        NewItem(
            ReviewKind.PAIRWISE,
            (Turn("user", question),),
            reply_a=f"{answer} Written by x",
            reply_b=f"Sorry, I cannot say. Written by y{index}",
            model_id_a="model-x",
            model_id_b="model-y",
            source="eval_1",
            reviews_wanted=2,
        )
        for index, (question, answer) in enumerate(TOPICS[:3])
    ]
    agreed, split, tied = world.queue.enqueue(pairs)
    expected_reviews = {
        agreed: [review_pair(world, agreed, "ann", "x"), review_pair(world, agreed, "bob", "x")],
        tied: [],
    }
    review_pair(world, split, "ann", "x")
    review_pair(world, split, "bob", "y1")
    expected_reviews[tied] = [
        review_pair(world, tied, "ann", "tie"),
        review_pair(world, tied, "bob", "y2"),
    ]
    # Corrections of two sampled conversations.
    ids, _ = world.queue.enqueue_dataset_sample(
        DatasetSampleRequest(
            chats_version, ReviewKind.CORRECTION, count=2, seed=5, validation=False
        )
    )
    corrections = {}
    for item_id in ids:
        leased = world.queue.next_item("cy", ReviewKind.CORRECTION)
        assert leased is not None
        text = f"A careful, complete answer to: {leased.item.context[-1].content}"
        corrections[world.queue.submit(ReviewInput(item_id, "cy", correction=text)).id] = text

    result = world.queue.export_feedback(
        ExportRequest("feedback", sft_dataset_name="feedback-sft", validation_fraction=0.0)
    )
    assert (result.preference_pairs, result.items_without_majority) == (2, 1)
    assert (result.corrections, result.reviews_exported) == (2, 6)

    preference = world.data.GetDatasetVersion(
        data_pb2.GetDatasetVersionRequest(dataset_version_id=result.preference_version_id),
        metadata=AUTH,
    ).dataset_version
    assert (preference.dataset_name, preference.kind) == (
        "feedback",
        data_pb2.SAMPLE_KIND_PREFERENCE,
    )
    samples = world.data.PreviewDatasetVersion(
        data_pb2.PreviewDatasetVersionRequest(
            dataset_version_id=preference.id, split=data_pb2.SPLIT_TRAIN, limit=10
        ),
        metadata=AUTH,
    ).preference_samples
    assert len(samples) == 2
    for sample in samples:
        line = source_line(world, preference, sample.lineage.record)
        item_id = str(line["item_id"])
        assert line["review_ids"] == expected_reviews[item_id]
        winner = "model-x" if item_id == agreed else "model-y"
        assert line["chosen_model_id"] == winner
        assert sample.chosen.endswith("Written by x" if winner == "model-x" else "Written by y2")

    sft = world.data.GetDatasetVersion(
        data_pb2.GetDatasetVersionRequest(dataset_version_id=result.sft_version_id),
        metadata=AUTH,
    ).dataset_version
    assert (sft.dataset_name, sft.kind, sft.stats.samples) == (
        "feedback-sft",
        data_pb2.SAMPLE_KIND_CHAT,
        2,
    )
    chats = world.data.PreviewDatasetVersion(
        data_pb2.PreviewDatasetVersionRequest(
            dataset_version_id=sft.id, split=data_pb2.SPLIT_TRAIN, limit=10
        ),
        metadata=AUTH,
    ).samples
    for chat in chats:
        review_ids = source_line(world, sft, chat.lineage.record)["review_ids"]
        assert isinstance(review_ids, list)
        (review_id,) = review_ids
        assert chat.messages[-1].content == corrections[review_id]

    exported = {r.id: r.exported_to for r in world.queue.list_reviews(100, 0)}
    for review_id in [*expected_reviews[agreed], *expected_reviews[tied]]:
        assert exported[review_id] == (preference.id,)
    for review_id in corrections:
        assert exported[review_id] == (sft.id,)
    assert sum(1 for versions in exported.values() if not versions) == 2  # the split item

    again = world.queue.export_feedback(ExportRequest("feedback"))
    assert (again.preference_version_id, again.sft_version_id, again.reviews_exported) == (
        "",
        "",
        0,
    )
    everything = world.queue.export_feedback(
        ExportRequest(
            "feedback",
            sft_dataset_name="feedback-sft",
            include_exported=True,
            validation_fraction=0.0,
        )
    )
    # The same records again: the data service hands back the same versions.
    assert everything.preference_version_id == preference.id
    assert everything.sft_version_id == sft.id

    with pytest.raises(InvalidArgumentError) as caught:
        world.queue.enqueue_dataset_sample(
            DatasetSampleRequest(preference.id, ReviewKind.RATING, count=1)
        )
    assert "preference" in caught.value.violations[0].description
