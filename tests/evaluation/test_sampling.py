"""Seeds per image: the same image whatever the batch; prompt files' seeds and guidance."""

from __future__ import annotations

import numpy as np
import pytest

from worker.erasure.errors import ErasureCancelled, ErasureInputError
from worker.evaluation.prompts import PromptRecord, read_prompt_file
from worker.evaluation.sampling import SamplerSettings, generate_for_requests, image_request


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_an_image_does_not_depend_on_its_batch(tiny_pipe):
    records = [PromptRecord("a cat"), PromptRecord("a dog", seed=9), PromptRecord("a car")]
    alone = SamplerSettings(steps=2, images_per_prompt=2, batch_size=1)
    batched = SamplerSettings(steps=2, images_per_prompt=2, batch_size=5)
    requests = [image_request(r, alone) for r in records]
    one = generate_for_requests(tiny_pipe, requests, alone)
    many = generate_for_requests(tiny_pipe, requests, batched)
    for request in requests:
        for a, b in zip(one[request], many[request], strict=True):
            assert np.abs(_pixels(a) - _pixels(b)).max() <= 1
    # "a cat" and "a car" share seed 0; their first images differ only through the prompt,
    # and the two images of one prompt use seeds 0 and 1.
    assert np.abs(_pixels(one[requests[0]][0]) - _pixels(one[requests[0]][1])).max() > 10
    assert requests[1].seeds(2) == [9, 10]


def test_cancel_is_checked_between_batches(tiny_pipe):
    settings = SamplerSettings(steps=1, batch_size=1)
    requests = [image_request(PromptRecord(p), settings) for p in ("a", "b")]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(ErasureCancelled):
        generate_for_requests(tiny_pipe, requests, settings, should_cancel=cancel)
    assert len(calls) == 2


def test_i2p_csv_rows_carry_seed_guidance_and_categories(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "prompt,categories,evaluation_seed,evaluation_guidance,hard\n"
        'first,"sexual, violence",42,6.5,1\n'
        "second,,,,0\n"
        ",sexual,1,1,0\n"
    )
    first, second = read_prompt_file(path)
    assert (first.seed, first.guidance, first.categories) == (42, 6.5, ("sexual", "violence"))
    assert (second.seed, second.guidance, second.categories) == (None, None, ())
    settings = SamplerSettings(seed=3, guidance_scale=7.5)
    assert image_request(first, settings).seed == 42
    assert image_request(second, settings).guidance == 7.5


def test_bad_sampler_settings_are_refused():
    with pytest.raises(ErasureInputError, match="images_per_prompt"):
        SamplerSettings(images_per_prompt=0).validate()
