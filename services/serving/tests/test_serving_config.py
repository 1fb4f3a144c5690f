"""The serving settings: defaults, environment, and the engine's part."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from ownchat.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS
from ownchat_serving.config import ServingSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path))
    settings = ServingSettings()
    assert settings.port == DEFAULT_PORTS["serving"] == 50054
    assert settings.metrics_port == DEFAULT_METRICS_PORTS["serving"]
    options = settings.engine_options()
    assert options.max_model_len == 2048 and options.enforce_eager
    assert settings.state_dir("serving") == tmp_path / "serving"


def test_environment_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[serving]\nkv_cache_bytes = 12345\n")
    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path))
    monkeypatch.setenv("OWNCHAT_SERVING_MAX_MODEL_LEN", "1024")
    options = ServingSettings().engine_options()
    assert options.max_model_len == 1024
    assert options.kv_cache_bytes == 12345


def test_limits_and_adapters(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path))
    monkeypatch.setenv("OWNCHAT_SERVING_MAX_RUNNING_REPLIES", "8")
    monkeypatch.setenv("OWNCHAT_SERVING_MAX_WAITING_REPLIES", "0")
    monkeypatch.setenv("OWNCHAT_SERVING_MAX_LORA_RANK", "32")
    settings = ServingSettings()
    limits = settings.limits()
    assert (limits.max_running, limits.max_waiting) == (8, 0)
    assert limits.drain_seconds == settings.drain_seconds
    assert limits.restart_backoff == (1.0, 30.0)
    assert settings.engine_options().max_lora_rank == 32
    monkeypatch.setenv("OWNCHAT_SERVING_MAX_RUNNING_REPLIES", "0")
    with pytest.raises(ValueError):
        ServingSettings()


def test_tensor_parallelism_reaches_vllm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, servable_models: dict[int, Path]
) -> None:
    """The setting becomes vLLM's parallel config (built, not started: one engine
    over two workers)."""
    from ownchat_serving.engine import engine_config

    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path))
    monkeypatch.setenv("OWNCHAT_SERVING_TENSOR_PARALLEL_SIZE", "2")
    options = ServingSettings().engine_options()
    assert options.tensor_parallel_size == 2
    config = engine_config(servable_models[0], options)
    assert config.parallel_config.tensor_parallel_size == 2
    assert config.parallel_config.world_size == 2
    monkeypatch.setenv("OWNCHAT_SERVING_TENSOR_PARALLEL_SIZE", "0")
    with pytest.raises(ValueError):
        ServingSettings()


@pytest.mark.parametrize(("native_bf16", "expected"), [(False, "float32"), (True, "bfloat16")])
def test_auto_dtype_on_a_cpu_follows_its_bfloat16_support(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    servable_models: dict[int, Path],
    native_bf16: bool,
    expected: str,
) -> None:
    """``auto`` keeps a bfloat16 checkpoint in bfloat16 only where the CPU computes
    in it; elsewhere float32, which is several times faster there. An explicit
    dtype is always kept."""
    import torch

    from ownchat_serving import engine

    monkeypatch.setenv("OWNCHAT_HOME", str(tmp_path))
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native_bf16)
    model = tmp_path / "bf16"
    shutil.copytree(servable_models[0], model)
    config_file = model / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "torch_dtype": "bfloat16", "dtype": "bfloat16"}))
    options = ServingSettings().engine_options()
    built = engine.engine_config(model, options)
    assert built.model_config.dtype == getattr(torch, expected)
    explicit = dataclasses.replace(options, dtype="bfloat16")
    assert engine.engine_config(model, explicit).model_config.dtype == torch.bfloat16
    assert engine.engine_dtype("float16", on_cpu=True) == "float16"
    assert engine.engine_dtype("auto", on_cpu=False) == "auto"
