"""Tiny models for the metrics: a random CLIP with the real tokenizer, a small feature net."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")


def build_tiny_clip(seed: int = 0):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    from transformers.utils import logging

    from worker.erasure.tokenizer import load_clip_tokenizer
    from worker.evaluation.clip_models import ClipModel

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=load_clip_tokenizer(),
    )
    return ClipModel(CLIPModel(config).eval(), processor, {"name": "tiny-clip", "sha256": "-"})


class MeanColourNet(torch.nn.Module):
    """A fixed 'feature extractor': per-channel means and a 2x2 pooled grey image (7 numbers)."""

    def forward(self, images):
        grey = images.mean(dim=1, keepdim=True)
        pooled = torch.nn.functional.adaptive_avg_pool2d(grey, 2).flatten(1)
        return torch.cat([images.mean(dim=(2, 3)), pooled], dim=1) / 255.0


def tiny_feature_extractor():
    from worker.evaluation.inception import ModuleFeatures

    return ModuleFeatures(MeanColourNet(), 16, {"name": "mean-colour-net"})


@pytest.fixture(scope="session")
def tiny_clip():
    return build_tiny_clip()


@pytest.fixture(scope="session")
def tiny_pipe():
    from worker.erasure.tiny_model import build_tiny_pipeline

    pipe = build_tiny_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def resources(tiny_clip):
    from worker.evaluation.resources import EvaluationResources

    return EvaluationResources(
        clip_loader=lambda name: tiny_clip,
        inception_loader=lambda path: tiny_feature_extractor(),
    )
