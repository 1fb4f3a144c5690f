"""Test support: a tiny, randomly initialised chat model built in seconds, free
loopback ports for services started by tests and benchmarks, an in-process gRPC
server behind the token check, and a clock moved by hand.

Used by the unit tests of the trainer, evaluator and serving, which must run on
a CPU in seconds and fetch nothing. The model needs ``transformers`` and ``tokenizers``.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc

# Below this, ports are often reserved for well-known services.
_LOWEST_PORT = 10000
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port free now, for a service a test or benchmark starts.

    Not from the ephemeral range: a port the kernel picked there (``bind(0)``)
    could be taken by another service's outgoing connection before the service
    that was given it binds it (seen: a metrics port lost to a client socket
    while ``ownchat up`` started the services). Never the same port twice in
    one process, and drawn at random so that processes rarely meet.
    """
    low, _ = _ephemeral_range()
    if low - _LOWEST_PORT >= 1000:
        for _ in range(200):
            port = random.randrange(_LOWEST_PORT, low)
            if port in _handed_out:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        chosen: int = probe.getsockname()[1]
    _handed_out.add(chosen)
    return chosen


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Hello, how can I help you today?",
    "Our refund window is 30 days from delivery.",
    "The Zephyr X2 router costs 129 euros and ships in two days.",
    "Error code E42 means the firmware update was interrupted.",
    "Please restart the device and try again.",
    "You are a helpful support assistant for Acme.",
    "What is the price of the Zephyr X2?",
    "Thank you, that fixed it!",
]


def build_tiny_chat_model(directory: Path, seed: int = 0) -> Path:
    """Writes a tiny Llama-architecture model with a ChatML tokenizer to a directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        # vLLM's CPU attention needs a head size of at least 32.
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@contextmanager
def loopback_channel(
    register: Callable[[grpc.Server], None], token: str, workers: int = 4
) -> Iterator[grpc.Channel]:
    """A gRPC server on a free loopback port, behind ownchat's token check, serving
    what ``register`` adds to it; yields a channel to it and stops both after."""
    from ownchat.interceptors import ServerInterceptor

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), interceptors=[ServerInterceptor(token)]
    )
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(None).wait()


class ManualClock:
    """A clock (``time.time``'s shape) that a test moves by hand: ``clock.advance(61)``.

    With ``step``, every reading first moves it on by that much, so that each
    record a store stamps gets a later time than the last.
    """

    def __init__(self, now: float = 1_000_000.0, step: float = 0.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
