import copy

import pytest
import torch

from worker.erasure.attention_capture import (
    AttentionStore,
    CrossAttentionCaptureProcessor,
    capture_cross_attention,
    pixel_grid,
)
from worker.erasure.layers import cross_attention_layers, cross_attention_projections
from worker.erasure.tiny_model import TEXT_WIDTH, build_tiny_pipeline


@pytest.fixture(scope="module")
def unet():
    return build_tiny_pipeline(seed=0).unet


def _inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, 16, 16, generator=generator)
    text = torch.randn(batch, 77, TEXT_WIDTH, generator=generator)
    return latents, torch.tensor([500] * batch), text


def test_probabilities_are_recorded_for_every_layer_and_sum_to_one(unet):
    latents, t, text = _inputs()
    with torch.no_grad(), capture_cross_attention(unet) as store:
        unet(latents, t, encoder_hidden_states=text)
    layers = cross_attention_layers(unet)
    assert set(store.maps) == set(layers)
    for name, calls in store.maps.items():
        assert len(calls) == 1
        probabilities = calls[0]
        heads = layers[name].heads
        assert probabilities.shape[:2] == (2, heads) and probabilities.shape[-1] == 77
        assert probabilities.shape[2] in (16 * 16, 8 * 8)
        torch.testing.assert_close(
            probabilities.sum(-1), torch.ones(probabilities.shape[:-1]), atol=1e-5, rtol=0
        )


def test_output_equals_the_default_processor(unet):
    latents, t, text = _inputs()
    with torch.no_grad():
        expected = unet(latents, t, encoder_hidden_states=text).sample
        with capture_cross_attention(unet):
            captured = unet(latents, t, encoder_hidden_states=text).sample
    assert (captured - expected).abs().max().item() < 1e-5


def test_batch_entries_are_not_mixed(unet):
    latents, t, text = _inputs()
    with torch.no_grad(), capture_cross_attention(unet) as both:
        unet(latents, t, encoder_hidden_states=text)
    with torch.no_grad(), capture_cross_attention(unet) as second:
        unet(latents[1:], t[1:], encoder_hidden_states=text[1:])
    for name, maps in both.last().items():
        torch.testing.assert_close(maps[1], second.last()[name][0], atol=1e-5, rtol=1e-4)


def test_processors_are_restored_even_after_an_error(unet):
    before = {name: m.processor for name, m in cross_attention_layers(unet).items()}
    with pytest.raises(RuntimeError, match="inside"), capture_cross_attention(unet):
        installed = [m.processor for m in cross_attention_layers(unet).values()]
        assert all(isinstance(p, CrossAttentionCaptureProcessor) for p in installed)
        raise RuntimeError("inside")
    after = {name: m.processor for name, m in cross_attention_layers(unet).items()}
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)


def test_maps_keep_the_graph_only_when_asked(unet):
    latents, t, text = _inputs(1)
    text = text.clone().requires_grad_(True)
    with capture_cross_attention(unet, keep_graph=True) as kept:
        unet(latents, t, encoder_hidden_states=text)
    with capture_cross_attention(unet) as observed:
        unet(latents, t, encoder_hidden_states=text)
    assert all(m.requires_grad for m in kept.last().values())
    assert not any(m.requires_grad for m in observed.last().values())
    sum(m[..., 5].sum() for m in kept.last().values()).backward()
    assert text.grad is not None and text.grad.abs().sum() > 0


def test_lora_layers_on_the_projections_take_part(unet):
    from peft import LoraConfig

    adapted = copy.deepcopy(unet)
    targets = list(cross_attention_projections(adapted))
    torch.manual_seed(0)
    adapted.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=targets), "test")
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # the standard zero init would hide the adapter
    latents, t, text = _inputs()
    with torch.no_grad():
        expected = adapted(latents, t, encoder_hidden_states=text).sample
        plain = unet(latents, t, encoder_hidden_states=text).sample
        with capture_cross_attention(adapted) as store:
            captured = adapted(latents, t, encoder_hidden_states=text).sample
    assert (expected - plain).abs().max() > 1e-3
    assert (captured - expected).abs().max().item() < 1e-5
    assert len(store.maps) == len(cross_attention_layers(adapted))


def test_store_clear_and_custom_recorder(unet):
    class Counter:
        calls = 0

        def record(self, layer, probabilities):
            Counter.calls += 1

    latents, t, text = _inputs(1)
    with torch.no_grad(), capture_cross_attention(unet, Counter()):
        unet(latents, t, encoder_hidden_states=text)
    assert Counter.calls == len(cross_attention_layers(unet))
    store = AttentionStore()
    store.record("x", torch.zeros(1))
    store.clear()
    assert store.maps == {}


def test_pixel_grid():
    assert pixel_grid(4096, (64, 64)) == (64, 64)
    assert pixel_grid(256, (64, 64)) == (16, 16)
    assert pixel_grid(12 * 16, (96, 128)) == (12, 16)
    assert pixel_grid(8 * 10, (15, 20)) == (8, 10)  # odd sizes round up, like stride-2 convs
    with pytest.raises(ValueError):
        pixel_grid(100, (64, 64))
