"""Lean activations: the same loss and gradients as the model's own layers, with fewer
bytes kept for the backward (counted through autograd's saved-tensor hooks)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ownchat_trainer.engine import lean_activations, varlen_attention
from ownchat_trainer.engine.lean_activations import (
    _lean_layer_forward,
    add_norm,
    apply_lean_activations,
    silu_mul_linear,
)
from ownchat_trainer.engine.lora import LoraSettings, add_lora

HIDDEN, INTERMEDIATE, LAYERS, TOKENS = 64, 160, 3, 96


# k and v are 2 heads of 16 wide.
TINY_SHAPE: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "attn_implementation": "sdpa",
}


def tiny_llama(attention: str = "sdpa") -> Any:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_SHAPE, "attn_implementation": attention})).float()


def tiny_qwen2(attention: str = "sdpa") -> Any:
    """Qwen2's q, k and v projections have biases."""
    torch.manual_seed(0)
    config = Qwen2Config(**{**TINY_SHAPE, "attn_implementation": attention})
    model = Qwen2ForCausalLM(config).float()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.1)
    return model


def tiny_llama_varlen() -> Any:
    """Under the varlen attention q, k and v run as one product too."""
    assert varlen_attention.register(varlen_attention.sequence_loop_kernel)
    return tiny_llama(varlen_attention.ATTENTION_NAME)


def tiny_qwen2_varlen() -> Any:
    assert varlen_attention.register(varlen_attention.sequence_loop_kernel)
    return tiny_qwen2(varlen_attention.ATTENTION_NAME)


def reference_and_lean(build: Callable[[], Any] = tiny_llama) -> tuple[Any, Any]:
    """The same weights twice: as transformers builds the model, and made lean."""
    reference = build()
    lean = copy.deepcopy(reference)
    assert apply_lean_activations(lean)
    return reference, lean


def bf16_autocast() -> AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def model_inputs(model: Any, batch: torch.Tensor) -> dict[str, Any]:
    """``batch`` (rows of token ids) as the model's attention takes it: rows under
    sdpa, laid end to end with their offsets under the varlen attention."""
    if model.config._attn_implementation != varlen_attention.ATTENTION_NAME:
        return {"input_ids": batch, "use_cache": False}
    rows, length = batch.shape
    offsets = torch.arange(0, rows * length + 1, length, dtype=torch.int32, device=batch.device)
    return {
        "input_ids": batch.reshape(1, -1),
        "position_ids": torch.arange(length, device=batch.device).repeat(rows)[None],
        "cu_seq_lens_q": offsets,
        "cu_seq_lens_k": offsets,
        "max_length_q": length,
        "max_length_k": length,
        "use_cache": False,
    }


def loss_and_grads(
    model: Any, autocast: Callable[[], AbstractContextManager[Any]], device: str = "cpu"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    input_ids = torch.randint(0, 128, (2, TOKENS // 2)).to(device)
    model.zero_grad(set_to_none=True)
    with autocast():
        logits = model(**model_inputs(model, input_ids)).logits.reshape(2, TOKENS // 2, -1)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1)
    )
    loss.backward()
    grads = {
        name: parameter.grad.clone()
        for name, parameter in model.named_parameters()
        if parameter.grad is not None
    }
    return loss.detach(), grads


BUILDS = [tiny_llama, tiny_qwen2, tiny_llama_varlen, tiny_qwen2_varlen]
BUILD_IDS = ["llama", "qwen2-biases", "llama-varlen", "qwen2-biases-varlen"]


@pytest.mark.parametrize("build", BUILDS, ids=BUILD_IDS)
@pytest.mark.parametrize("autocast", [nullcontext, bf16_autocast], ids=["fp32", "bf16-autocast"])
def test_without_grad_the_lean_model_gives_the_same_logits(
    autocast: Callable[[], AbstractContextManager[Any]], build: Callable[[], Any]
) -> None:
    """Evaluation: each projection on its own, SwiGLU without a Function."""
    reference, lean = reference_and_lean(build)
    input_ids = torch.randint(0, 128, (2, TOKENS // 2), generator=torch.Generator().manual_seed(5))
    logits = []
    for model in (reference, lean):
        with torch.no_grad(), autocast():
            logits.append(model(**model_inputs(model, input_ids)).logits)
    assert torch.equal(logits[1], logits[0])


def assert_as_close_to_exact_as(
    grads: dict[str, torch.Tensor],
    reference_grads: dict[str, torch.Tensor],
    exact_grads: dict[str, torch.Tensor],
) -> None:
    """Each of ``grads`` is no further from the fp32 gradient than transformers' own
    bf16 one (the projections' one product rounds its sums once, not once a layer:
    other bf16 roundings, as accurate)."""
    assert grads.keys() == reference_grads.keys() == exact_grads.keys()
    for name, exact in exact_grads.items():
        scale = float(exact.norm())
        ours = float((grads[name] - exact).norm()) / scale
        theirs = float((reference_grads[name] - exact).norm()) / scale
        assert ours <= 1.5 * theirs + 1e-3, f"{name}: {ours:.2e} from fp32, theirs {theirs:.2e}"


@pytest.mark.parametrize("build", BUILDS, ids=BUILD_IDS)
@pytest.mark.parametrize("autocast", [nullcontext, bf16_autocast], ids=["fp32", "bf16-autocast"])
def test_lean_model_computes_the_same_loss_and_gradients(
    autocast: Callable[[], AbstractContextManager[Any]], build: Callable[[], Any]
) -> None:
    reference, lean = reference_and_lean(build)

    reference_loss, reference_grads = loss_and_grads(reference, autocast)
    lean_loss, lean_grads = loss_and_grads(lean, autocast)

    assert lean_loss.item() == reference_loss.item()
    if autocast is nullcontext:
        assert lean_grads.keys() == reference_grads.keys()
        for name, grad in reference_grads.items():
            torch.testing.assert_close(lean_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    else:
        _, exact_grads = loss_and_grads(reference, nullcontext)
        assert_as_close_to_exact_as(lean_grads, reference_grads, exact_grads)


def saved_bytes(model: Any, autocast: Callable[[], AbstractContextManager[Any]]) -> int:
    """Bytes of the distinct storages the forward keeps for the backward."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    input_ids = torch.randint(0, 128, (1, TOKENS))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast():
        model(**model_inputs(model, input_ids), logits_to_keep=1)
    return sum(size for pointer, size in storages.items() if pointer not in parameters)


def test_lean_model_keeps_fewer_bytes_for_the_backward() -> None:
    reference, lean = reference_and_lean()

    # Under bf16 autocast: q, k, v keep no cast of their norm's output, gate and up
    # none of theirs (5 hidden-size copies fewer: made again from the norm's input in
    # the backward); the MLP keeps gate and up but neither silu's output nor the
    # product (2 widths fewer). The second norm's fp32 input and normalised output,
    # and its rsqrt (one float a token), give way to the attention's bf16 output.
    add_norm = 2 * HIDDEN * 4 + 4 - HIDDEN * 2
    # Nor are the bf16 casts of the q, k, v, gate, up and down weights kept (cast
    # again in the backward); k and v are 2 heads of 16 wide.
    casts = (HIDDEN * (HIDDEN + 2 * 2 * 16) + 3 * HIDDEN * INTERMEDIATE) * 2
    fewer = saved_bytes(reference, bf16_autocast) - saved_bytes(lean, bf16_autocast)
    assert fewer == LAYERS * (TOKENS * ((5 * HIDDEN + 2 * INTERMEDIATE) * 2 + add_norm) + casts)
    # In float32 there is no cast: the two norms' outputs the projections read, the
    # MLP's two widths, and the second norm's two widths and rsqrt against the
    # attention's fp32 output.
    fewer_fp32 = saved_bytes(reference, nullcontext) - saved_bytes(lean, nullcontext)
    assert fewer_fp32 == LAYERS * TOKENS * (2 * HIDDEN * 4 + 2 * INTERMEDIATE * 4 + HIDDEN * 4 + 4)


def products(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the number of layers in each projection product made from a norm's output."""
    made: list[int] = []
    apply = lean_activations.NormFedLinears.apply

    def counted(*args: Any) -> Any:
        made.append(args[3])
        return apply(*args)

    monkeypatch.setattr(lean_activations.NormFedLinears, "apply", counted)
    return made


@pytest.mark.parametrize("autocast", [nullcontext, bf16_autocast], ids=["fp32", "bf16-autocast"])
def test_under_the_varlen_attention_q_k_and_v_are_one_product_keeping_no_more(
    monkeypatch: pytest.MonkeyPatch, autocast: Callable[[], AbstractContextManager[Any]]
) -> None:
    _, lean = reference_and_lean(tiny_llama_varlen)
    made = products(monkeypatch)
    loss_and_grads(lean, autocast)
    assert made == [3, 2] * LAYERS
    # Under sdpa q, k and v stay apart; gate and up are one product whatever the attention.
    made.clear()
    loss_and_grads(reference_and_lean(tiny_llama)[1], autocast)
    assert made == [1, 1, 1, 2] * LAYERS
    # v is a view of the q/k/v product: the varlen attention keeps a copy of it, as
    # it did of v alone, not the whole product with q and k.
    one_product = saved_bytes(lean, autocast)
    monkeypatch.setattr(
        lean_activations.ReaderGroup, "fusable", lambda group: group.only_under is None
    )
    assert saved_bytes(lean, autocast) == one_product


def test_a_recomputed_norm_output_is_dropped_after_its_last_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipes: list[Any] = []
    original = lean_activations._NormRecipe.__init__

    def record(self: Any, *args: Any) -> None:
        original(self, *args)
        recipes.append(self)

    made = []
    recompute = lean_activations._NormRecipe.recompute

    def count(self: Any, inputs: Any) -> Any:
        made.append(self._recomputed is None)
        return recompute(self, inputs)

    monkeypatch.setattr(lean_activations._NormRecipe, "__init__", record)
    monkeypatch.setattr(lean_activations._NormRecipe, "recompute", count)
    _, lean = reference_and_lean()
    loss_and_grads(lean, bf16_autocast)
    # Two norms a layer, each read by its projections (q, k and v apart under sdpa,
    # gate and up as one product) and made again once.
    assert len(recipes) == 2 * LAYERS
    assert len(made) == 4 * LAYERS and sum(made) == 2 * LAYERS
    assert all(r.pending == 0 and r._recomputed is None for r in recipes)


@pytest.mark.parametrize("autocast", [nullcontext, bf16_autocast], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("frozen", [(), ("residual",), ("residual", "weight")])
def test_add_norm_matches_autograd_whatever_is_frozen(
    autocast: Callable[[], AbstractContextManager[Any]], frozen: tuple[str, ...]
) -> None:
    """The add and norm recomputed in the backward against autograd's own, with the
    layer's input or the norm's weight frozen (an adapter's base)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    results = []
    for lean in (False, True):
        torch.manual_seed(4)
        norm = LlamaRMSNorm(HIDDEN)
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.1)
        norm.weight.requires_grad_("weight" not in frozen)
        residual = torch.randn(2, 9, HIDDEN, requires_grad="residual" not in frozen)
        delta = torch.randn(2, 9, HIDDEN, requires_grad=True)
        with autocast():
            # A linear layer's output: bf16 under autocast, as the attention's is.
            attended = torch.nn.functional.linear(delta, torch.eye(HIDDEN))
            total, normed = (
                add_norm(residual, attended, norm) if lean else (residual + attended, None)
            )
            if normed is None:
                normed = norm(total)
        (total.square().mean() + (normed * normed.detach().sin()).sum()).backward()
        grads = [t.grad for t in (residual, delta, norm.weight) if t.requires_grad]
        results.append((total.detach(), normed.detach(), grads))
    (total_ref, normed_ref, grads_ref), (total_lean, normed_lean, grads_lean) = results
    assert torch.equal(total_lean, total_ref) and torch.equal(normed_lean, normed_ref)
    assert len(grads_lean) == len(grads_ref) == 3 - len(frozen)
    for got, want in zip(grads_lean, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_every_layer_of_a_llama_model_runs_the_lean_forward() -> None:
    _, lean = reference_and_lean()
    assert all(layer.forward.__func__ is _lean_layer_forward for layer in lean.model.layers)


def test_silu_mul_linear_matches_autograd_with_a_bias() -> None:
    torch.manual_seed(2)
    gate_up = torch.randn(5, 7, 24, requires_grad=True)
    weight, bias = torch.randn(6, 12, requires_grad=True), torch.randn(6, requires_grad=True)
    out = silu_mul_linear(gate_up, weight, bias)
    gate, up = gate_up[..., :12], gate_up[..., 12:]
    expected = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, weight, bias)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (gate_up, weight, bias), grad)
    want = torch.autograd.grad(expected, (gate_up, weight, bias), grad)
    for name, a, b in zip(("gate_up", "weight", "bias"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("build", [tiny_llama, tiny_llama_varlen], ids=["sdpa", "varlen"])
@pytest.mark.parametrize("autocast", [nullcontext, bf16_autocast], ids=["fp32", "bf16-autocast"])
def test_adapters_on_every_projection_still_train(
    autocast: Callable[[], AbstractContextManager[Any]], build: Callable[[], Any]
) -> None:
    reference, lean = reference_and_lean(build)
    adapted = []
    for model in (reference, lean):
        torch.manual_seed(3)
        model = add_lora(model, LoraSettings(rank=4, alpha=8.0))
        # peft starts B at zero: move it so the adapters change the output.
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.1)
        adapted.append(model)
    reference, lean = adapted

    reference_loss, reference_grads = loss_and_grads(reference, autocast)
    lean_loss, lean_grads = loss_and_grads(lean, autocast)

    for projection in ("q_proj", "v_proj", "gate_proj", "down_proj"):
        assert any(f"{projection}.lora_B" in name for name in lean_grads), projection
    assert lean_loss.item() == pytest.approx(reference_loss.item(), rel=1e-6)
    if autocast is nullcontext:
        for name, grad in reference_grads.items():
            torch.testing.assert_close(lean_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    else:
        exact_grads = loss_and_grads(reference, nullcontext)[1]
        assert_as_close_to_exact_as(lean_grads, reference_grads, exact_grads)


def test_other_architectures_are_left_alone() -> None:
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    forwards = [block.mlp.forward for block in model.transformer.h]
    assert not apply_lean_activations(model)
    assert [block.mlp.forward for block in model.transformer.h] == forwards


def test_on_a_gpu_with_liger_kernel_the_lean_mlp_matches_ligers() -> None:
    """Liger's own SwiGLU MLP against ours (gate and up as one product, our SwiGLU
    kernels over its halves, the product recomputed)."""
    from ownchat_trainer.engine import fused_kernels

    if not fused_kernels.available(torch.device("cuda")):
        pytest.skip("needs CUDA and Liger Kernel")

    def cuda_autocast() -> AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=torch.bfloat16)

    reference = tiny_llama().to("cuda")
    lean = copy.deepcopy(reference)
    assert fused_kernels.apply_fused_kernels(reference, torch.device("cuda"))
    assert apply_lean_activations(lean)
    assert fused_kernels.apply_fused_kernels(lean, torch.device("cuda"), swiglu=False)

    reference_loss, reference_grads = loss_and_grads(reference, cuda_autocast, "cuda")
    lean_loss, lean_grads = loss_and_grads(lean, cuda_autocast, "cuda")
    torch.testing.assert_close(lean_loss, reference_loss, rtol=1e-4, atol=0)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=2e-2, atol=1e-4, msg=name)
