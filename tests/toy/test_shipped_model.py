"""The shipped toy model: loads as SD 1.x in fp32, fits its size budget, draws what it is told."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.toy.judge import JUDGE_FILE, load_judge
from worker.toy.prompts import concept_prompts
from worker.toy.scoring import generate_images, judged_correct

MODEL = Path(__file__).parents[2] / "worker" / "toy" / "model"
PIPELINE = MODEL / "pipeline"

pytestmark = pytest.mark.skipif(
    not (PIPELINE / "model_index.json").is_file() or not (MODEL / JUDGE_FILE).is_file(),
    reason="the toy model is not trained yet",
)


def test_shipped_files_fit_in_30_mb():
    shipped = [p for p in MODEL.rglob("*") if p.is_file() and "checkpoint" not in p.parts]
    assert sum(p.stat().st_size for p in shipped) <= 30 * 2**20


def test_shipped_pipeline_draws_the_named_objects():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(PIPELINE, dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32
    names = ["star", "heart", "house", "fish", "cup", "moon", "gear", "crown"]
    prompts = [concept_prompts(n, 1, seed=11)[0] for n in names]
    images = generate_images(pipe, [p for p, _ in prompts], seeds=list(range(len(names))))
    correct = judged_correct(
        load_judge(MODEL / JUDGE_FILE), images, [labels for _, labels in prompts], "object"
    )
    assert correct.sum() >= 6


def test_toy_object_anchor_keeps_cfr_off_the_retained_objects():
    """CFR towards the empty anchor learns a one-position shift that moves every prompt; the
    toy's one-token anchor pairs positions one to one and moves the retained objects far less."""
    from worker.erasure.base_model import load_pipeline
    from worker.erasure.cfr import closed_form_refine
    from worker.erasure.concepts import ConceptGroup
    from worker.erasure.encoding import PromptEncoder
    from worker.erasure.statistics import cfr_statistics
    from worker.toy.prompts import ANCHORS, OBJECT_FORMS, erasure_templates

    pipe = load_pipeline(str(PIPELINE))
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    retained = [forms[0] for name, forms in OBJECT_FORMS.items() if name != "star"]
    prompts = encoder.encode([f"a red {o} on a striped background" for o in retained]).double()
    between_objects = (prompts - prompts.mean(0)).norm()

    def moved(anchor: str) -> float:
        group = ConceptGroup(("star",), "object", anchor, templates=erasure_templates("object"))
        transform = closed_form_refine(cfr_statistics(encoder, [group]), cfr_lambda=100).transform
        change = prompts @ (transform - torch.eye(len(transform), dtype=torch.float64)).T
        return float(change.norm() / between_objects)

    assert moved(ANCHORS["object"]) < 0.6 * moved("")


def test_toy_end_tokens_are_alike_across_objects():
    """Why toy erasures leave the end and padding tokens out of the LoRA loss: on this text
    encoder they barely depend on the object named, unlike the phrase's own token."""
    from worker.erasure.base_model import load_pipeline
    from worker.erasure.encoding import PromptEncoder
    from worker.erasure.training_data import end_token_positions, phrase_token_positions
    from worker.toy.prompts import ERASURE_SETTINGS, OBJECT_FORMS

    assert all(not s["lora_suppress_end_tokens"] for s in ERASURE_SETTINGS.values())
    pipe = load_pipeline(str(PIPELINE))
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    template = "a red {} on a striped background"
    words = [forms[0] for forms in OBJECT_FORMS.values()]
    one_token = [
        w for w in words if len(pipe.tokenizer(w, add_special_tokens=False).input_ids) == 1
    ]
    assert len(one_token) >= 20
    embeddings = encoder.encode([template.format(o) for o in one_token]).double()
    [phrase] = phrase_token_positions(pipe.tokenizer, template, "star")
    ends = end_token_positions(pipe.tokenizer, template.format("star"))

    def spread(positions) -> float:
        at = embeddings[:, positions]
        return float((at - at.mean(0)).norm(dim=-1).mean() / at.norm(dim=-1).mean())

    assert spread(ends) < 0.3 * spread([phrase])  # measured: 0.17 against 0.77


def test_toy_captions_words_hold_little_of_the_paper_p():
    """Why toy erasures take P over each caption's own tokens: over all 77 positions, the start
    and padding positions (alike in every caption, see above) hold most of P's weight."""
    from worker.erasure.base_model import load_pipeline
    from worker.erasure.encoding import PromptEncoder
    from worker.erasure.statistics import prompt_second_moment
    from worker.toy.prompts import ERASURE_SETTINGS, captions_without

    assert all(s["preservation_tokens"] == "words" for s in ERASURE_SETTINGS.values())
    pipe = load_pipeline(str(PIPELINE))
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    captions = captions_without(["arrow"])
    every = prompt_second_moment(encoder, captions, "all")
    words = prompt_second_moment(encoder, captions, "words")
    assert float(words.total.trace() / every.total.trace()) < 0.25  # measured: 0.12
