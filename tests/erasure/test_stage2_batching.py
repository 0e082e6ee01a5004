"""Stage 2 batched across groups equals each group alone: images, LoRA factors, optimiser, dtype."""

from __future__ import annotations

import copy

import pytest
import torch

from worker.erasure.concept_optimizer import ConceptAdamW
from worker.erasure.concepts import ConceptGroup
from worker.erasure.errors import ErasureInputError
from worker.erasure.layers import cross_attention_projections
from worker.erasure.lora_training import LoraJob, LoraOptions, train_concept_loras
from worker.erasure.precision import autocast_dtype
from worker.erasure.routed_lora import RoutedLoraBank, routed_lora
from worker.erasure.stage2 import split_into_passes
from worker.erasure.tiny_model import build_tiny_pipeline
from worker.erasure.training_data import generate_training_sets

GROUPS = [
    (0, ConceptGroup(("cat", "kitten"))),
    (1, ConceptGroup(("van gogh",), "style")),
    (2, ConceptGroup(("dog",))),
]


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def training_sets(pipe):
    return generate_training_sets(pipe, GROUPS, seed=3, count=2, num_inference_steps=4)


def _jobs(training_sets, steps=(4, 6, 3), rates=(1e-2, 5e-3, 2e-2)):
    return [
        LoraJob(group, index, training_set, LoraOptions(learning_rate=rate, steps=count))
        for (index, group), training_set, count, rate in zip(
            GROUPS, training_sets, steps, rates, strict=True
        )
    ]


def test_batched_images_equal_images_drawn_one_by_one(pipe, training_sets):
    alone = generate_training_sets(
        pipe, GROUPS, seed=3, count=2, num_inference_steps=4, batch_size=1
    )
    for batched, single in zip(training_sets, alone, strict=True):
        assert batched.seeds == single.seeds and batched.prompts == single.prompts
        torch.testing.assert_close(batched.images, single.images, rtol=0, atol=1e-5)
        # A mask pixel may only flip where the attention map sits on the threshold.
        assert (batched.masks == single.masks).float().mean() > 0.99


def test_groups_trained_together_equal_each_trained_alone(pipe, training_sets):
    jobs = _jobs(training_sets)
    together = train_concept_loras(pipe, jobs, seed=5, precision="off")
    for job, batched in zip(jobs, together, strict=True):
        (alone,) = train_concept_loras(pipe, [job], seed=5, precision="off")
        assert len(batched.losses) == job.options.steps
        torch.testing.assert_close(
            torch.tensor(batched.losses), torch.tensor(alone.losses), rtol=1e-4, atol=0
        )
        for name, (up, down) in alone.factors.items():
            torch.testing.assert_close(batched.factors[name][0], up, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(batched.factors[name][1], down, rtol=1e-4, atol=1e-7)
    # The groups really trained: each moved its factors away from the zero init.
    assert all(any(up.abs().max() > 0 for up, _ in lora.factors.values()) for lora in together)


def test_bf16_autocast_training_agrees_with_fp32(pipe, training_sets):
    jobs = _jobs(training_sets, steps=(6, 6, 6), rates=(1e-2, 1e-2, 1e-2))
    full = train_concept_loras(pipe, jobs, seed=5, precision="off")
    half = train_concept_loras(pipe, jobs, seed=5, precision="bf16")
    for exact, mixed in zip(full, half, strict=True):
        deltas = [(up @ down) for up, down in exact.factors.values()]
        mixed_deltas = [(up @ down) for up, down in mixed.factors.values()]
        error = sum((a - b).norm() ** 2 for a, b in zip(deltas, mixed_deltas, strict=True)) ** 0.5
        size = sum(a.norm() ** 2 for a in deltas) ** 0.5
        assert error / size < 0.05, f"{exact.group.name}: bf16 off by {error / size:.3f}"
        assert all(up.dtype == torch.float32 for up, _ in mixed.factors.values())


def test_routed_factors_act_like_each_samples_own_dense_lora(pipe):
    unet = pipe.unet
    bank = RoutedLoraBank(unet, 2, rank=2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in bank.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    t = torch.tensor([300, 600])
    with torch.no_grad(), routed_lora(unet, bank):
        bank.route = torch.tensor([1, 0])
        routed = unet(latents, t, encoder_hidden_states=text).sample
    for sample, slot in ((0, 1), (1, 0)):
        dense = copy.deepcopy(unet)
        with torch.no_grad():
            for name, layer in cross_attention_projections(dense).items():
                up, down = bank.factors(slot)[name]
                layer.weight += up @ down
            expected = dense(
                latents[sample : sample + 1],
                t[sample : sample + 1],
                encoder_hidden_states=text[sample : sample + 1],
            ).sample
        torch.testing.assert_close(routed[sample : sample + 1], expected, rtol=1e-4, atol=1e-5)
    assert not any(layer._forward_hooks for layer in cross_attention_projections(unet).values())


def test_concept_adamw_equals_torch_adamw_and_clipping_per_concept():
    generator = torch.Generator().manual_seed(1)
    shapes = [(3, 2, 5), (3, 4, 2)]
    stacked = [torch.randn(s, generator=generator) for s in shapes]
    rates, decays, clips = [1e-2, 3e-3, 5e-2], [0.01, 0.0, 0.1], [1.0, 0.05, 10.0]
    ours = ConceptAdamW(stacked, learning_rates=rates, weight_decays=decays, max_grad_norms=clips)
    alone = [[p[slot].clone().requires_grad_(True) for p in stacked] for slot in range(3)]
    torch_optimisers = [
        torch.optim.AdamW(params, lr=rate, weight_decay=decay)
        for params, rate, decay in zip(alone, rates, decays, strict=True)
    ]
    active_until = [5, 5, 3]  # the third concept stops after three steps
    for step in range(5):
        grads = [torch.randn(s, generator=generator) for s in shapes]
        for param, grad in zip(stacked, grads, strict=True):
            param.grad = grad.clone()
        ours.step(torch.tensor([step < n for n in active_until]))
        for slot, (params, optimiser) in enumerate(zip(alone, torch_optimisers, strict=True)):
            if step >= active_until[slot]:
                continue
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad[slot].clone()
            torch.nn.utils.clip_grad_norm_(params, clips[slot])
            optimiser.step()
    for slot in range(3):
        for param, reference in zip(stacked, alone[slot], strict=True):
            torch.testing.assert_close(param[slot], reference.detach(), rtol=1e-4, atol=1e-6)


def test_passes_are_even_and_keep_request_order():
    assert split_into_passes(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_into_passes([2, 5], 32) == [[2, 5]]
    assert split_into_passes([], 8) == []


def test_groups_of_other_ranks_cannot_share_a_pass(pipe, training_sets):
    jobs = _jobs(training_sets)
    jobs[1] = LoraJob(jobs[1].group, 1, jobs[1].training_set, LoraOptions(rank=2))
    with pytest.raises(ErasureInputError, match="share their rank"):
        train_concept_loras(pipe, jobs, seed=0)


def test_auto_precision_is_bf16_or_fp16_on_gpus_and_off_on_the_cpu():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ErasureInputError, match="training_precision"):
        autocast_dtype("fp8", torch.device("cpu"))
