"""Image generation with a base or erased model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from app.settings import get_settings

from .common import Count, Weight
from .text import Identifier, Name, OptionalPhrase, Phrase


class GenerateRequest(BaseModel):
    """Either `model_id` (an erased model) or `base_model` (a registered base model's name)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model_id": "0f3c...", "prompt": "a photo of a cat"}]},
    )

    model_id: Identifier | None = None
    base_model: Name | None = None
    prompt: Phrase
    negative_prompt: OptionalPhrase | None = None
    seed: int = Field(default=0, strict=True, ge=0, le=2**63 - 1)
    num_inference_steps: Count = 25
    guidance_scale: Weight = 7.5
    width: StrictInt | None = Field(default=None, description="multiple of 8; default: model's")
    height: StrictInt | None = Field(default=None, description="multiple of 8; default: model's")
    num_images: Count = 1

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, steps: int) -> int:
        limit = get_settings().MAX_INFERENCE_STEPS
        if steps > limit:
            raise ValueError(f"must be at most {limit}, got {steps}")
        return steps

    @field_validator("width", "height")
    @classmethod
    def _side(cls, side: int | None) -> int | None:
        limit = get_settings().MAX_IMAGE_SIDE
        if side is not None and not (8 <= side <= limit and side % 8 == 0):
            raise ValueError(f"must be a multiple of 8 between 8 and {limit}, got {side}")
        return side

    @field_validator("num_images")
    @classmethod
    def _count(cls, count: int) -> int:
        limit = get_settings().MAX_IMAGES_PER_REQUEST
        if count > limit:
            raise ValueError(f"at most {limit} images per request, got {count}")
        return count

    @model_validator(mode="after")
    def _one_model(self) -> GenerateRequest:
        if (self.model_id is None) == (self.base_model is None):
            raise ValueError("give either model_id (an erased model) or base_model (a name)")
        return self


class GeneratedImages(BaseModel):
    """Several images, base64-encoded PNGs, all drawn from one generator seeded with `seed`."""

    images: list[str]
    seconds: float | None = None
