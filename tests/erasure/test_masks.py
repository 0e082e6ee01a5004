import pytest
import torch

from worker.erasure.concepts import ConceptGroup
from worker.erasure.errors import ErasureCancelled, ErasureInputError
from worker.erasure.masks import (
    MASK_PROVIDERS,
    AttentionMaskProvider,
    ConceptAttentionAccumulator,
    FullMaskProvider,
    mask_provider,
)
from worker.erasure.tiny_model import IMAGE_SIZE, build_tiny_pipeline
from worker.erasure.training_data import generate_training_set, image_seed

GROUP = ConceptGroup(("cat", "kitten"))


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def training_set(pipe):
    return generate_training_set(pipe, GROUP, 0, seed=11, count=2, num_inference_steps=4)


def test_full_mask_is_all_ones():
    mask = mask_provider("full")(torch.rand(3, 24, 40), "cat")
    assert mask.dtype == torch.bool and mask.shape == (24, 40) and mask.all()


def test_attention_masks_are_boolean_image_sized_and_non_trivial(training_set):
    assert training_set.mask_provider == "attention"
    assert training_set.masks.dtype == torch.bool
    assert training_set.masks.shape == (2, IMAGE_SIZE, IMAGE_SIZE)
    assert training_set.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert training_set.images.min() >= 0 and training_set.images.max() <= 1
    for mask in training_set.masks:
        assert 0.02 < mask.float().mean() < 0.98
    assert training_set.prompts == ["a photo of the cat", "a photo of the kitten"]
    assert training_set.phrases == ["cat", "kitten"]
    assert training_set.seeds == [image_seed(11, 0, 0), image_seed(11, 0, 1)]


def test_training_images_and_masks_are_reproducible(pipe, training_set):
    again = generate_training_set(pipe, GROUP, 0, seed=11, count=2, num_inference_steps=4)
    assert torch.equal(again.images, training_set.images)
    assert torch.equal(again.masks, training_set.masks)
    other = generate_training_set(pipe, GROUP, 1, seed=11, count=1, num_inference_steps=4)
    assert not torch.equal(other.images[0], training_set.images[0])


def test_image_seeds_differ_across_groups_and_images():
    seeds = {image_seed(s, g, i) for s in range(3) for g in range(3) for i in range(8)}
    assert len(seeds) == 3 * 3 * 8
    assert all(0 <= s < 2**63 for s in seeds)


def test_attention_mask_follows_the_concept_map():
    concept_map = torch.zeros(8, 8)
    concept_map[1:3, 5:7] = 1.0
    concept_map[0, 0] = 0.4  # below half the peak: outside
    mask = AttentionMaskProvider()(torch.rand(3, 32, 32), "cat", concept_map)
    assert mask.shape == (32, 32)
    assert mask[6:10, 22:26].all()
    assert not mask[:2, :2].any()
    assert not mask[20:].any()


def test_flat_concept_map_gives_the_full_mask():
    mask = AttentionMaskProvider()(torch.rand(3, 16, 16), "cat", torch.full((4, 4), 0.3))
    assert mask.all()


def test_accumulator_averages_layers_and_steps_at_latent_resolution():
    accumulator = ConceptAttentionAccumulator([2, 3], (8, 8))
    coarse = torch.zeros(2, 4, 16, 77)  # (batch, heads, 4x4 pixels, tokens)
    coarse[1, :, 0, 2] = 1.0  # conditional entry, top-left pixel, first concept token
    fine = torch.zeros(2, 4, 64, 77)
    fine[1, :, 63, 3] = 0.5
    fine[0, :, :, 2:4] = 9.0  # the unconditional entry is ignored
    accumulator.record("a", coarse)
    accumulator.record("b", fine)
    concept_map = accumulator.concept_map()
    assert concept_map.shape == (8, 8)
    assert concept_map[0, 0] > 0.4 and concept_map[7, 7] == pytest.approx(0.25)
    assert concept_map[4, 4] == 0


def test_unknown_provider_is_a_clear_input_error():
    with pytest.raises(ErasureInputError, match="unknown mask provider 'sam2'.*attention"):
        mask_provider("sam2")
    assert set(MASK_PROVIDERS) == {"attention", "full", "grounded-sam"}
    assert isinstance(mask_provider("full"), FullMaskProvider)


def test_grounded_sam_without_weights_names_what_is_missing(monkeypatch):
    monkeypatch.delenv("MACE_GROUNDING_DINO_PATH", raising=False)
    monkeypatch.delenv("MACE_SAM_PATH", raising=False)
    with pytest.raises(ErasureInputError) as error:
        mask_provider("grounded-sam")
    message = str(error.value)
    assert "GroundingDINO" in message and "MACE_GROUNDING_DINO_PATH" in message
    assert "SAM" in message and "MACE_SAM_PATH" in message


def test_grounded_sam_with_a_missing_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MACE_GROUNDING_DINO_PATH", str(tmp_path))
    monkeypatch.setenv("MACE_SAM_PATH", str(tmp_path / "absent"))
    with pytest.raises(ErasureInputError, match="SAM weights folder .*absent.* does not exist"):
        mask_provider("grounded-sam")


def test_generation_reports_progress_and_can_be_cancelled(pipe):
    calls = []
    generate_training_set(
        pipe,
        GROUP,
        0,
        seed=1,
        count=2,
        num_inference_steps=2,
        mask_provider="full",
        batch_size=1,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 2), (2, 2)]
    polls = iter([False, True])
    with pytest.raises(ErasureCancelled):
        generate_training_set(
            pipe,
            GROUP,
            0,
            seed=1,
            count=3,
            num_inference_steps=2,
            should_cancel=lambda: next(polls),
        )
