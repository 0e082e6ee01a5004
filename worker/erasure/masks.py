"""Where the concept is in a training image: the mask stage 2 restricts its loss to.

Providers take the generated image (3 x H x W floats in [0, 1]), the phrase it shows and, for the
`attention` provider, the concept's attention map captured while the image was generated; they
return a boolean H x W mask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from .attention_capture import pixel_grid
from .errors import ErasureInputError

logger = logging.getLogger(__name__)

GROUNDING_DINO_ENV = "MACE_GROUNDING_DINO_PATH"
SAM_ENV = "MACE_SAM_PATH"


class MaskProvider(Protocol):
    name: str
    uses_attention: bool  # needs the concept map captured during generation

    def __call__(
        self, image: torch.Tensor, phrase: str, concept_map: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class ConceptAttentionMaps:
    """Reduces cross-attention maps to one map per image of its concept's tokens, at latent
    resolution, for a batch of images generated together.

    Each recorded call (one layer at one denoising step) contributes, per image, the attention of
    its conditional prompt on its concept's tokens, summed over those tokens, averaged over heads,
    and resized (bilinear) from the layer's grid to the latent grid. Every layer and step weighs
    the same. Only the running sums are kept, on the device the maps are on, so memory does not
    grow with the number of steps and nothing is copied to the host until the maps are read.

    Args:
        token_positions: per image, the positions of its concept's tokens in its 77-token prompt.
        latent_size: (height, width) of the latents being denoised.
    """

    def __init__(
        self, token_positions: Sequence[Sequence[int]], latent_size: tuple[int, int]
    ) -> None:
        self.token_positions = [list(positions) for positions in token_positions]
        self.latent_size = tuple(latent_size)
        self.total: torch.Tensor | None = None
        self.selection: torch.Tensor | None = None
        self.count = 0

    def record(self, layer: str, probabilities: torch.Tensor) -> None:
        # Under classifier-free guidance diffusers puts the unconditional prompts first, so the
        # conditional ones are always the last `images` entries.
        images = len(self.token_positions)
        conditional = probabilities[-images:]
        if self.selection is None:
            self.selection = torch.zeros(images, conditional.shape[-1], device=conditional.device)
            for row, positions in enumerate(self.token_positions):
                self.selection[row, positions] = 1.0
            self.total = torch.zeros(images, *self.latent_size, device=conditional.device)
        heads = conditional.shape[1]
        selection = self.selection.to(conditional.dtype)
        per_pixel = torch.einsum("bhpt,bt->bp", conditional, selection).float() / heads
        grid = pixel_grid(per_pixel.shape[1], self.latent_size)
        resized = F.interpolate(
            per_pixel.view(images, 1, *grid),
            size=self.latent_size,
            mode="bilinear",
            align_corners=False,
        )
        self.total += resized[:, 0].detach()
        self.count += 1

    def concept_maps(self) -> torch.Tensor:
        """The mean map of each image over every recorded layer and step (images x H x W)."""
        if self.count == 0 or self.total is None:
            raise RuntimeError("no cross-attention was recorded")
        return (self.total / self.count).cpu()


class ConceptAttentionAccumulator(ConceptAttentionMaps):
    """`ConceptAttentionMaps` of one image."""

    def __init__(self, token_positions: Sequence[int], latent_size: tuple[int, int]) -> None:
        super().__init__([token_positions], latent_size)

    def concept_map(self) -> torch.Tensor:
        """The mean map over every recorded layer and step (latent height x width)."""
        return self.concept_maps()[0]


class AttentionMaskProvider:
    """Mask from the base model's own attention on the concept's tokens.

    Rule: the concept map is min-max normalised to [0, 1], upsampled (bilinear) to the image
    size, and the mask is where it is above `threshold` (default 0.5, i.e. above the midpoint
    between the least and the most attended pixel). A flat map carries no location, so it gives
    the full mask.
    """

    name = "attention"
    uses_attention = True

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0 <= threshold < 1:
            raise ErasureInputError(f"attention mask threshold must be in [0, 1), got {threshold}")
        self.threshold = threshold

    def __call__(
        self, image: torch.Tensor, phrase: str, concept_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        if concept_map is None:
            raise ValueError("the attention mask provider needs the captured concept map")
        low, high = concept_map.min(), concept_map.max()
        if not high - low > 1e-12:
            logger.warning("flat attention map for %r: using the full mask", phrase)
            return torch.ones(image.shape[-2:], dtype=torch.bool)
        normalised = (concept_map.float() - low) / (high - low)
        upsampled = F.interpolate(
            normalised[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False
        )
        return upsampled[0, 0] > self.threshold


class FullMaskProvider:
    """Every pixel (what the reference uses for styles, which have no location)."""

    name = "full"
    uses_attention = False

    def __call__(
        self, image: torch.Tensor, phrase: str, concept_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.ones(image.shape[-2:], dtype=torch.bool)


class GroundedSamMaskProvider:
    """GroundingDINO boxes for the phrase, segmented by SAM, both through transformers.

    Weights are read from local folders only (arguments, else the environment variables
    MACE_GROUNDING_DINO_PATH and MACE_SAM_PATH); nothing is downloaded. The unit tests have no
    such weights, so only the missing-weights error is exercised there; the detection and
    segmentation path runs only where an operator has installed the models. When nothing is
    detected the full mask is used, so the image still contributes to the loss.

    Args:
        grounding_dino_path: folder of a transformers GroundingDINO checkpoint.
        sam_path: folder of a transformers SAM checkpoint.
        box_threshold: minimum box confidence.
        text_threshold: minimum phrase-to-box score.
        device: where both models run.
    """

    name = "grounded-sam"
    uses_attention = False

    def __init__(
        self,
        grounding_dino_path: str | os.PathLike | None = None,
        sam_path: str | os.PathLike | None = None,
        *,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        device: str | torch.device = "cpu",
    ) -> None:
        dino = _local_weights("GroundingDINO", grounding_dino_path, GROUNDING_DINO_ENV)
        sam = _local_weights("SAM", sam_path, SAM_ENV)
        missing = [problem for problem in (dino, sam) if isinstance(problem, str)]
        if missing:
            raise ErasureInputError(
                "the grounded-sam mask provider needs local weights: "
                + "; ".join(missing)
                + ". Install them or use the 'attention' or 'full' mask provider."
            )
        from transformers import (
            AutoModelForZeroShotObjectDetection,
            AutoProcessor,
            SamModel,
            SamProcessor,
        )

        self.device = torch.device(device)
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.dino_processor = AutoProcessor.from_pretrained(dino, local_files_only=True)
        self.dino = (
            AutoModelForZeroShotObjectDetection.from_pretrained(dino, local_files_only=True)
            .to(self.device)
            .eval()
        )
        self.sam_processor = SamProcessor.from_pretrained(sam, local_files_only=True)
        self.sam = SamModel.from_pretrained(sam, local_files_only=True).to(self.device).eval()

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, phrase: str, concept_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        from PIL import Image

        size = tuple(image.shape[-2:])
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        picture = Image.fromarray(pixels)
        # GroundingDINO expects lower-case phrases ending with a period.
        text = phrase.lower().strip().rstrip(".") + "."
        inputs = self.dino_processor(images=picture, text=text, return_tensors="pt").to(self.device)
        detections = self.dino_processor.post_process_grounded_object_detection(
            self.dino(**inputs),
            inputs.input_ids,
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[size],
        )[0]
        boxes = detections["boxes"]
        if boxes.numel() == 0:
            logger.warning("GroundingDINO found no %r: using the full mask", phrase)
            return torch.ones(size, dtype=torch.bool)
        prompts = self.sam_processor(
            images=picture, input_boxes=[boxes.cpu().tolist()], return_tensors="pt"
        ).to(self.device)
        outputs = self.sam(**prompts, multimask_output=False)
        masks = self.sam_processor.post_process_masks(
            outputs.pred_masks.cpu(),
            prompts["original_sizes"].cpu(),
            prompts["reshaped_input_sizes"].cpu(),
        )[0]
        return masks.reshape(-1, *size).any(dim=0)


def _local_weights(what: str, given: str | os.PathLike | None, env: str) -> Path | str:
    """The folder of local weights, or a sentence saying what is missing."""
    value = given if given is not None else os.environ.get(env)
    if not value:
        return f"{what} weights are not configured (pass a folder or set {env})"
    path = Path(value).expanduser()
    if not path.is_dir():
        return f"{what} weights folder {str(path)!r} does not exist (from {env} or the argument)"
    return path


MASK_PROVIDERS: dict[str, Callable[..., MaskProvider]] = {
    "attention": AttentionMaskProvider,
    "full": FullMaskProvider,
    "grounded-sam": GroundedSamMaskProvider,
}


def mask_provider(name: str, **options) -> MaskProvider:
    """The mask provider called `name`, built with `options`.

    Args:
        name: one of `MASK_PROVIDERS` ("attention", "full", "grounded-sam").
        **options: passed to the provider (e.g. `threshold` for "attention").
    """
    try:
        factory = MASK_PROVIDERS[name]
    except KeyError:
        raise ErasureInputError(
            f"unknown mask provider {name!r}; use one of {', '.join(MASK_PROVIDERS)}"
        ) from None
    return factory(**options)
