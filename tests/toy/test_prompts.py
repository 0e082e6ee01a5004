"""The grammar: every concept and every surface form is said, and prompts name what is drawn."""

from __future__ import annotations

import itertools
import re

import numpy as np

from worker.toy.prompts import (
    ANCHORS,
    CONCEPTS,
    ERASURE_SETTINGS,
    OBJECT_FORMS,
    STYLE_FORMS,
    captions_without,
    concept,
    concept_prompts,
    erasure_request,
    preservation_prompt_set,
    training_captions,
    training_examples,
    vocabulary,
)
from worker.toy.world import BACKGROUNDS, COLOURS, OBJECTS, STYLE_NAMES


def _says(prompt: str, form: str) -> bool:
    return re.search(rf"\b{re.escape(form)}\b", prompt) is not None


def test_concepts_cover_the_world_with_synonyms():
    assert [c.name for c in CONCEPTS if c.kind == "object"] == list(OBJECTS)
    assert [c.name for c in CONCEPTS if c.kind == "style"] == list(STYLE_NAMES)
    assert len(CONCEPTS) >= 40
    assert sum(c.has_synonyms for c in CONCEPTS) >= 10
    forms = [f for c in CONCEPTS for f in c.surface_forms]
    context = list(COLOURS) + list(BACKGROUNDS)
    assert len(forms) == len(set(forms)), "a surface form names two concepts"
    for form, other in itertools.permutations(forms + context, 2):
        assert not _says(other, form), f"{form!r} is a word of {other!r}"


def test_training_captions_say_every_surface_form_and_name_the_drawn_object():
    seen = set()
    for prompt, labels in itertools.islice(training_captions(seed=0), 6000):
        object_forms = [f for f in OBJECT_FORMS[labels.object] if _says(prompt, f)]
        assert object_forms, prompt
        seen.update(object_forms)
        seen.update(f for f in STYLE_FORMS[labels.style] if _says(prompt, f))
        for name, forms in {**OBJECT_FORMS, **STYLE_FORMS}.items():
            if name not in (labels.object, labels.style):
                assert not any(_says(prompt, f) for f in forms), (prompt, labels)
        if _says(prompt, labels.colour):
            assert not any(_says(prompt, c) for c in COLOURS if c != labels.colour)
    assert seen == {f for c in CONCEPTS for f in c.surface_forms}


def test_training_examples_are_seeded():
    first = list(itertools.islice(training_examples(seed=5), 3))
    again = list(itertools.islice(training_examples(seed=5), 3))
    other = list(itertools.islice(training_examples(seed=6), 3))
    assert [e.prompt for e in first] == [e.prompt for e in again]
    assert all(
        np.array_equal(np.asarray(a.image), np.asarray(b.image))
        for a, b in zip(first, again, strict=True)
    )
    assert [e.prompt for e in first] != [e.prompt for e in other]


def test_concept_prompts_use_the_requested_form_and_label():
    for prompt, labels in concept_prompts("checkered", 20, seed=1, form="checkerboard"):
        assert _says(prompt, "checkerboard") and labels.style == "checkered"
    for prompt, labels in concept_prompts("lightning", 20, seed=1):
        assert labels.object == "lightning"
        assert any(_says(prompt, f) for f in concept("lightning").surface_forms)
    assert concept_prompts("star", 5, seed=2) == concept_prompts("star", 5, seed=2)


def test_anchors_are_one_token_words_the_world_never_says():
    from worker.erasure.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    captions = [caption for caption, _ in itertools.islice(training_captions(seed=0), 2000)]
    said = {w for caption in captions for w in re.findall(r"\w+", caption)}
    assert {w for forms in vocabulary().values() for form in forms for w in form.split()} <= said
    for kind, anchor in ANCHORS.items():
        assert len(tokenizer(anchor, add_special_tokens=False).input_ids) == 1, kind
        assert anchor not in said, kind


def test_erasure_request_is_a_valid_body_naming_every_surface_form():
    from app.schemas.erasures import ErasureCreate

    prompt_set = preservation_prompt_set(["heart"])
    assert prompt_set["prompts"] == list(captions_without(["heart"]))
    body = erasure_request("heart", "toy-sd", "ps-1", {"images_per_concept": 4})
    ErasureCreate.model_validate(body)
    (group,) = body["concepts"]
    assert group["targets"] == ["heart", "valentine"]
    assert group["anchor"] == ANCHORS["object"]
    assert all(t.count("{}") == 1 for t in group["templates"])
    assert body["preservation_prompt_set"] == "ps-1"
    assert body["images_per_concept"] == 4
    style = erasure_request("dotted", "toy-sd", "ps-1", {})
    assert style["concepts"][0]["kind"] == "style"
    # Each kind takes its own toy settings.
    assert body["lora_learning_rate"] == ERASURE_SETTINGS["object"]["lora_learning_rate"]
    assert style["lora_learning_rate"] == ERASURE_SETTINGS["style"]["lora_learning_rate"]
    assert body["lora_learning_rate"] != style["lora_learning_rate"]
