import copy
import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from worker.erasure.attention_capture import capture_cross_attention
from worker.erasure.concepts import ConceptGroup
from worker.erasure.errors import ErasureCancelled, ErasureInputError
from worker.erasure.layers import cross_attention_projections
from worker.erasure.lora_files import LORA_WEIGHT_NAME, load_lora_factors, save_lora_factors
from worker.erasure.lora_training import (
    LoraOptions,
    attention_suppression_loss,
    encode_training_latents,
    save_concept_lora,
    train_concept_lora,
)
from worker.erasure.templates import TEMPLATES, fill
from worker.erasure.tiny_model import build_tiny_pipeline
from worker.erasure.training_data import (
    end_token_positions,
    generate_training_set,
    phrase_token_positions,
)

GROUP = ConceptGroup(("cat", "kitten"))
TEST_OPTIONS = LoraOptions(learning_rate=1e-2, steps=30)
TEXT_ENCODER_KEY = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
MID_KEY = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
ONE = torch.ones(1, 1)


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def training_set(pipe):
    return generate_training_set(pipe, GROUP, 0, seed=0, count=2, num_inference_steps=4)


@pytest.fixture(scope="module")
def trained(pipe, training_set):
    state = {name: p.detach().clone() for name, p in pipe.unet.state_dict().items()}
    flags = {name: p.requires_grad for name, p in pipe.unet.named_parameters()}
    calls = []
    lora = train_concept_lora(
        pipe,
        GROUP,
        0,
        training_set,
        TEST_OPTIONS,
        seed=0,
        progress=lambda done, total: calls.append((done, total)),
    )
    return lora, state, flags, calls


def _held_out_loss(pipe, unet, training_set, *, end_tokens: bool = True) -> float:
    """Mean suppression loss over fixed (image, prompt, t, noise) draws that training never saw
    in this combination; over the phrase's tokens, and the end and padding tokens if asked."""
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    latents = encode_training_latents(pipe.vae, training_set.images)
    losses = []
    for index, template in enumerate(TEMPLATES["object"][:6]):
        image, t = index % 2, torch.tensor([250 + 25 * index])
        prompt = fill(template, "cat")
        tokens = phrase_token_positions(pipe.tokenizer, template, "cat")
        if end_tokens:
            tokens += end_token_positions(pipe.tokenizer, prompt)
        embeds = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
        noise = torch.randn(latents[:1].shape, generator=torch.Generator().manual_seed(100 + index))
        noisy = schedule.add_noise(latents[image : image + 1], noise, t)
        with torch.no_grad(), capture_cross_attention(unet) as store:
            unet(noisy, t, encoder_hidden_states=embeds)
        masks = training_set.masks[image : image + 1]
        losses.append(attention_suppression_loss(store.last(), masks, [tokens], (16, 16)).item())
    return sum(losses) / len(losses)


def _with_factors(unet, factors):
    edited = copy.deepcopy(unet)
    projections = cross_attention_projections(edited)
    with torch.no_grad():
        for name, (up, down) in factors.items():
            projections[name].weight += up @ down
    return edited


def test_training_lowers_the_held_out_attention_loss(pipe, training_set, trained):
    lora = trained[0]
    before = _held_out_loss(pipe, pipe.unet, training_set)
    after = _held_out_loss(pipe, _with_factors(pipe.unet, lora.factors), training_set)
    assert after < 0.9 * before


def test_phrase_only_loss_leaves_the_end_tokens_out(pipe, training_set, trained):
    options = LoraOptions(learning_rate=1e-2, steps=20, suppress_end_tokens=False)
    phrase_only = train_concept_lora(pipe, GROUP, 0, training_set, options, seed=0)
    # Same seed, same draws: the first step's loss differs only by the suppressed tokens, and the
    # end and padding tokens hold most of the attention of an image that ignores a short phrase.
    assert phrase_only.losses[0] < 0.5 * trained[0].losses[0]
    before = _held_out_loss(pipe, pipe.unet, training_set, end_tokens=False)
    edited = _with_factors(pipe.unet, phrase_only.factors)
    assert _held_out_loss(pipe, edited, training_set, end_tokens=False) < 0.9 * before


def test_the_unet_is_exactly_as_before(pipe, trained):
    _, state, flags, _ = trained
    after = pipe.unet.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[name], state[name]) for name in state)
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags
    assert not getattr(pipe.unet, "peft_config", None)
    assert all(type(m) is nn.Linear for m in cross_attention_projections(pipe.unet).values())


def test_factors_cover_every_edited_matrix(pipe, trained):
    lora, _, _, calls = trained
    projections = cross_attention_projections(pipe.unet)
    assert list(lora.factors) == list(projections)
    for name, (up, down) in lora.factors.items():
        weight = projections[name].weight
        assert up.shape == (weight.shape[0], 1) and down.shape == (1, weight.shape[1])
        assert up.dtype == down.dtype == torch.float32 and up.device.type == "cpu"
        assert lora.delta(name).shape == weight.shape
    moved = {name for name, (up, _) in lora.factors.items() if up.abs().sum() > 0}
    # up starts at zero. Every key projection shapes its own layer's attention; a value
    # projection only reaches the loss through later layers, so the last layer's to_v cannot move.
    assert {name for name in projections if name.endswith("to_k")} <= moved
    last_value = "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v"
    assert last_value in projections and last_value not in moved
    assert len(moved) == len(projections) - 1
    assert len(lora.losses) == 30 and all(torch.isfinite(torch.tensor(lora.losses)))
    assert calls == [(step, 30) for step in range(1, 31)]


def test_training_is_reproducible_and_batches_work(pipe, training_set):
    options = LoraOptions(learning_rate=1e-2, steps=2, batch_size=2)
    first = train_concept_lora(pipe, GROUP, 0, training_set, options, seed=5)
    again = train_concept_lora(pipe, GROUP, 0, training_set, options, seed=5)
    assert first.losses == again.losses
    assert all(torch.equal(first.factors[n][0], again.factors[n][0]) for n in first.factors)
    assert len(first.losses) == 2 and all(loss > 0 for loss in first.losses)


def test_cancelling_stops_and_removes_the_adapter(pipe, training_set):
    flags = {name: p.requires_grad for name, p in pipe.unet.named_parameters()}
    polls = iter([False, True])
    with pytest.raises(ErasureCancelled):
        train_concept_lora(
            pipe, GROUP, 0, training_set, TEST_OPTIONS, seed=0, should_cancel=lambda: next(polls)
        )
    assert not getattr(pipe.unet, "peft_config", None)
    assert {name: p.requires_grad for name, p in pipe.unet.named_parameters()} == flags


@pytest.mark.parametrize(
    "options",
    [
        {"rank": 0},
        {"rank": 1.5},
        {"batch_size": 0},
        {"steps": 0},
        {"learning_rate": -1.0},
        {"t1": 500, "t2": 100},
        {"suppress_end_tokens": "no"},
    ],
)
def test_invalid_options_are_input_errors(options):
    with pytest.raises(ErasureInputError):
        LoraOptions(**options)


def test_options_follow_the_kind_defaults():
    explicit = LoraOptions.for_group(ConceptGroup(("nudity",), kind="explicit"))
    assert (explicit.learning_rate, explicit.steps, explicit.cfis) == (1e-5, 120, False)
    assert LoraOptions.for_group(GROUP, rank=4).rank == 4


def test_latents_come_from_pixels_in_minus_one_to_one(pipe, training_set):
    latents = encode_training_latents(pipe.vae, training_set.images)
    with torch.no_grad():
        mean = pipe.vae.encode(training_set.images * 2 - 1).latent_dist.mean
    torch.testing.assert_close(latents, mean * pipe.vae.config.scaling_factor)
    assert latents.shape == (2, 4, 16, 16)


def test_suppression_loss_on_a_hand_made_map():
    maps = torch.zeros(2, 3, 4, 77)  # (batch, heads, 2x2 pixels, tokens)
    maps[0, :, 0, 5] = 0.5  # inside the mask, suppressed token: counts
    maps[0, :, 0, 1] = 0.5  # token not suppressed: ignored
    maps[0, :, 3, 5] = 0.5  # outside the mask: ignored
    maps[1, :, 1, 6] = 1.0
    masks = torch.tensor([[[True, False], [False, False]], [[False, True], [False, False]]])
    loss = attention_suppression_loss({"l": maps}, masks, [[5], [6]], (2, 2))
    expected = ((3 * 0.25) ** 0.5 + 3**0.5) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_phrase_positions_point_at_the_phrase_in_every_template(pipe):
    tokenizer = pipe.tokenizer
    for kind, templates in TEMPLATES.items():
        for template in templates:
            for phrase in ("cat", "Van Gogh", "a person wearing clothes"):
                ids = tokenizer(fill(template, phrase), padding="max_length").input_ids
                positions = phrase_token_positions(tokenizer, template, phrase)
                phrase_ids = tokenizer(phrase, add_special_tokens=False).input_ids
                assert [ids[p] for p in positions] == phrase_ids, (kind, template, phrase)
    ends = end_token_positions(tokenizer, "a photo of the cat")
    assert ends == list(range(6, 77))
    assert tokenizer("a photo of the cat").input_ids[6] == tokenizer.eos_token_id


def test_saved_lora_loads_in_diffusers_with_the_same_delta(pipe, trained, tmp_path):
    lora = trained[0]
    path = save_concept_lora(lora, tmp_path)
    assert path == tmp_path / LORA_WEIGHT_NAME and path.is_file()
    loaded = copy.deepcopy(pipe)
    loaded.load_lora_weights(tmp_path)
    loaded.fuse_lora()
    original = cross_attention_projections(pipe.unet)
    for name, layer in cross_attention_projections(loaded.unet).items():
        fused = layer.get_base_layer().weight if hasattr(layer, "get_base_layer") else layer.weight
        difference = fused - original[name].weight - lora.delta(name)
        assert difference.abs().max().item() < 1e-6, name
    factors = load_lora_factors(path, matrix_names=list(original))
    assert factors.keys() == lora.factors.keys()
    for name, (up, down) in factors.items():
        assert torch.equal(up, lora.factors[name][0]) and torch.equal(down, lora.factors[name][1])


def test_kohya_layout_is_read_with_its_alpha(tmp_path, caplog):
    generator = torch.Generator().manual_seed(0)
    names = [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
    ]
    tensors, expected = {}, {}
    for name in names:
        key = "lora_unet_" + name.replace(".", "_")
        up, down = torch.randn(64, 2, generator=generator), torch.randn(2, 32, generator=generator)
        tensors |= {
            f"{key}.lora_up.weight": up,
            f"{key}.lora_down.weight": down,
            f"{key}.alpha": torch.tensor(1.0),
        }
        expected[name] = (up * 0.5, down)  # alpha 1 over rank 2
    tensors[f"{TEXT_ENCODER_KEY}.lora_down.weight"] = torch.ones(2, 4)
    tensors["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k.alpha"] = torch.ones(
        1
    )
    save_file(tensors, tmp_path / "kohya.safetensors")
    with caplog.at_level(logging.WARNING):
        factors = load_lora_factors(tmp_path / "kohya.safetensors")
    assert "skipped 2 keys" in caplog.text
    assert factors.keys() == expected.keys()
    for name, (up, down) in factors.items():
        torch.testing.assert_close(up, expected[name][0])
        torch.testing.assert_close(down, expected[name][1])


def test_older_diffusers_layout_with_metadata_alpha(tmp_path):
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    up, down = torch.randn(32, 4), torch.randn(4, 32)
    metadata = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})}
    save_file(
        {f"unet.{name}.lora.up.weight": up, f"unet.{name}.lora.down.weight": down},
        tmp_path / "old.safetensors",
        metadata=metadata,
    )
    factors = load_lora_factors(tmp_path / "old.safetensors")
    torch.testing.assert_close(factors[name][0], up * 2)


@pytest.mark.parametrize(
    "tensors",
    [
        # original-SD block names cannot be mapped onto a diffusers UNet
        {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight": ONE},
        # DoRA is not a plain low-rank delta
        {f"unet.{MID_KEY}.lora_magnitude_vector": ONE},
        # an up without its down
        {f"unet.{MID_KEY}.lora_B.weight": ONE},
        # nothing usable at all
        {f"{TEXT_ENCODER_KEY}.lora_down.weight": ONE},
    ],
)
def test_unusable_lora_files_are_input_errors(tmp_path, tensors):
    save_file(tensors, tmp_path / "bad.safetensors")
    with pytest.raises(ErasureInputError):
        load_lora_factors(tmp_path / "bad.safetensors")


def test_lora_for_another_model_is_an_input_error(pipe, trained, tmp_path):
    path = save_concept_lora(trained[0], tmp_path)
    with pytest.raises(ErasureInputError, match="does not have"):
        load_lora_factors(path, matrix_names=["mid_block.attentions.0.other"])


def test_factors_of_mixed_ranks_round_trip_through_diffusers(pipe, tmp_path):
    generator = torch.Generator().manual_seed(3)
    factors = {}
    for index, (name, layer) in enumerate(cross_attention_projections(pipe.unet).items()):
        rank = 1 + index % 3
        out_features, in_features = layer.weight.shape
        factors[name] = (
            torch.randn(out_features, rank, generator=generator) * 0.1,
            torch.randn(rank, in_features, generator=generator),
        )
    path = save_lora_factors(factors, tmp_path)
    loaded = copy.deepcopy(pipe)
    loaded.load_lora_weights(tmp_path)
    loaded.fuse_lora()
    original = cross_attention_projections(pipe.unet)
    for name, layer in cross_attention_projections(loaded.unet).items():
        up, down = factors[name]
        difference = layer.get_base_layer().weight - original[name].weight - up @ down
        assert difference.abs().max().item() < 1e-6, name
    for name, (up, down) in load_lora_factors(path).items():
        torch.testing.assert_close(up @ down, factors[name][0] @ factors[name][1])
