"""CLIP score, zero-shot accuracy and UA/IRA: hand counts on fixed logits, then end to end."""

from __future__ import annotations

import math

import pytest
import torch

from worker.evaluation.clip_accuracy import erasure_accuracy_scores, harmonic_mean, top1_correct
from worker.evaluation.clip_score import clip_scores
from worker.evaluation.run import run_evaluation
from worker.evaluation.sampling import SamplerSettings
from worker.evaluation.ua_ira import ua_ira_from_logits

FAST = SamplerSettings(steps=2, batch_size=2)


def test_clip_score_is_100_times_the_clamped_cosine():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 1.0], [0.0, 5.0], [-1.0, 0.0]])
    expected = [100 / math.sqrt(2), 100.0, 0.0]
    assert clip_scores(images, texts).tolist() == pytest.approx(expected)


def test_clip_accuracy_scores_from_fixed_logits():
    labels = ["cat", "dog", "car"]
    # 5 erased images (truth cat): 2 still read as cat.
    erased = torch.tensor([[3, 1, 0], [0, 2, 1], [1, 0, 2], [5, 0, 0], [0, 0, 1]], dtype=float)
    # 4 retained images (truth dog): 3 read as dog.
    retained = torch.tensor([[0, 1, 0], [0, 3, 1], [2, 1, 0], [0, 4, 0]], dtype=float)
    # 2 synonym images (truth cat): 1 read as cat.
    synonyms = torch.tensor([[1, 0, 0], [0, 0, 1]], dtype=float)
    correct = {
        "erased": top1_correct(erased, [labels.index("cat")] * 5),
        "retained": top1_correct(retained, [labels.index("dog")] * 4),
        "synonyms": top1_correct(synonyms, [labels.index("cat")] * 2),
    }
    scores = erasure_accuracy_scores(correct)
    assert scores["efficacy"] == pytest.approx(1 - 2 / 5)
    assert scores["specificity"] == pytest.approx(3 / 4)
    assert scores["generality"] == pytest.approx(1 - 1 / 2)
    assert scores["H"] == pytest.approx(3 / (1 / 0.6 + 1 / 0.75 + 1 / 0.5))
    assert harmonic_mean([0.5, 0.0]) == 0.0


def test_ua_ira_counts_every_image_whatever_the_number_of_prompts():
    # 7 target images (column 0 = target caption): 3 classified as target -> UA = 4/7.
    target = torch.tensor([[1, 0], [0, 1], [2, 1], [0, 3], [1, 2], [5, 4], [0, 1]], dtype=float)
    # 5 retained images: 4 classified as retained -> IRA = 4/5.
    retained = torch.tensor([[0, 1], [1, 2], [3, 1], [0, 9], [1, 1.5]], dtype=float)
    scores = ua_ira_from_logits(target, retained)
    assert scores["ua"] == pytest.approx(4 / 7)
    assert scores["ira"] == pytest.approx(4 / 5)
    assert scores["value"] == pytest.approx((4 / 7 + 4 / 5) / 2)
    assert (scores["target_correct"], scores["target_total"]) == (4, 7)
    assert (scores["retain_correct"], scores["retain_total"]) == (4, 5)


def _generate(pipe, prompts, sampler):
    from worker.evaluation.prompts import PromptRecord
    from worker.evaluation.sampling import generate_for_requests, image_request

    requests = [image_request(PromptRecord(p), sampler) for p in prompts]
    drawn = generate_for_requests(pipe, requests, sampler)
    return [image for r in requests for image in drawn[r]]


def test_clip_score_end_to_end_equals_the_hand_computed_mean(
    tiny_pipe, tiny_clip, resources, tmp_path
):
    prompts = ["a cat", "a dog on grass", "a red car"]
    report = run_evaluation(
        {"base": tiny_pipe},
        [{"name": "clip_score"}],
        tmp_path,
        prompt_sets={"default": prompts},
        sampler=FAST,
        resources=resources,
    )
    images = _generate(tiny_pipe, prompts, FAST)
    cosine = (tiny_clip.image_embeddings(images) * tiny_clip.text_embeddings(prompts)).sum(-1)
    expected = (100 * cosine.clamp_min(0)).mean().item()
    assert report["summary"]["clip_score"]["base"] == pytest.approx(expected, rel=1e-6)
    assert report["metrics"][0]["settings"]["model"]["name"] == "tiny-clip"


def test_ua_ira_and_clip_accuracy_end_to_end_across_batches(
    tiny_pipe, tiny_clip, resources, tmp_path
):
    target = ["a cat", "a cat on a sofa", "a black cat"]
    retain = ["a dog", "a dog running", "a small dog"]
    ua_config = {
        "target_prompts": target,
        "retain_prompts": retain,
        "target_concept": "cat",
        "retain_concept": "dog",
    }
    accuracy_config = {
        "erased": [{"label": "cat", "prompts": target[:2]}],
        "retained": [{"label": "dog", "prompts": retain}],
        "synonyms": [{"label": "cat", "prompts": ["a kitten"]}],
        "label_template": "a photo of a {}",
    }
    report = run_evaluation(
        {"base": tiny_pipe},
        [
            {"name": "ua_ira", "config": ua_config},
            {"name": "clip_accuracy", "config": accuracy_config},
        ],
        tmp_path,
        sampler=FAST,
        resources=resources,
    )
    captions = tiny_clip.text_embeddings(["Image of cat", "Image of dog"])
    target_pred = tiny_clip.image_embeddings(_generate(tiny_pipe, target, FAST)) @ captions.T
    retain_pred = tiny_clip.image_embeddings(_generate(tiny_pipe, retain, FAST)) @ captions.T
    ua = (target_pred.argmax(-1) != 0).double().mean().item()
    ira = (retain_pred.argmax(-1) == 1).double().mean().item()
    result = report["metrics"][0]["results"]["base"]
    assert result["details"]["target_total"] == 3 and result["details"]["retain_total"] == 3
    assert result["details"]["ua"] == pytest.approx(ua)
    assert result["details"]["ira"] == pytest.approx(ira)
    assert result["value"] == pytest.approx((ua + ira) / 2)

    labels = tiny_clip.text_embeddings(["a photo of a cat", "a photo of a dog"])

    def accuracy(prompts, truth):
        logits = tiny_clip.image_embeddings(_generate(tiny_pipe, prompts, FAST)) @ labels.T
        return (logits.argmax(-1) == truth).double().mean().item()

    scores = report["metrics"][1]["results"]["base"]["details"]
    assert scores["efficacy"] == pytest.approx(1 - accuracy(target[:2], 0))
    assert scores["specificity"] == pytest.approx(accuracy(retain, 1))
    assert scores["generality"] == pytest.approx(1 - accuracy(["a kitten"], 0))


def test_a_clip_model_not_on_this_machine_is_a_clear_error(tmp_path, monkeypatch):
    from worker.erasure.errors import ModelNotFoundError
    from worker.evaluation.clip_models import load_clip

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="openai/clip-vit-large-patch14.*nothing is"):
        load_clip("openai/clip-vit-large-patch14")


def test_a_saved_clip_folder_loads_with_its_hash(tiny_clip, tmp_path):
    from worker.evaluation.clip_models import load_clip

    tiny_clip.model.save_pretrained(tmp_path / "clip")
    tiny_clip.processor.save_pretrained(tmp_path / "clip")
    loaded = load_clip(str(tmp_path / "clip"), device="cpu")
    assert loaded.source["name"] == str(tmp_path / "clip")
    assert len(loaded.source["sha256"]) == 64
    texts = ["a cat", "a dog"]
    assert torch.allclose(loaded.text_embeddings(texts), tiny_clip.text_embeddings(texts))
