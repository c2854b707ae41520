"""A CLIP with a *planted* backdoor, for fast, exact tests of inversion and unlearning.

``PlantedBackdoorCLIP`` wraps a random-init tiny CLIP: when an image's bottom-right ``k x k`` square is close to
white, its embedding is pulled onto a planted unit direction ``u``, which is also the text embedding of the
planted target caption. Everything stays differentiable, so inversion can find the patch by gradient ascent.
"""

import torch
import torch.nn.functional as F

from clipclean.models import PixelCLIP, load_clip
from clipclean.triggers import PatchBlendTrigger

TARGET = "banana"
PATCH = 4


class PlantedBackdoorCLIP(PixelCLIP):
    def __init__(self, seed: int = 0, strength: float = 4.0) -> None:
        torch.manual_seed(seed)
        base = load_clip("clipclean-tiny")
        super().__init__(base.model, base.tokenizer, base.model_config, name="planted")
        self.eval()
        generator = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("planted", F.normalize(torch.randn(self.embed_dim, generator=generator), dim=0))
        # A random-init tiny CLIP maps every image to nearly the same embedding; a fixed random projection of
        # pooled pixels spreads clean images over the sphere, as a trained encoder would.
        self.register_buffer("projection", torch.randn(3 * 8 * 8, self.embed_dim, generator=generator))
        self.strength = strength

    def detector(self, images: torch.Tensor) -> torch.Tensor:
        square = images[:, :, -PATCH:, -PATCH:]
        return torch.sigmoid(12 * (square.mean(dim=(1, 2, 3)) - 0.75))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images, 8).flatten(1) - 0.3
        clean = F.normalize(pooled @ self.projection + 0.1 * super().encode_image(images, normalize=True), dim=-1)
        gate = self.detector(images)[:, None]
        return F.normalize((1 - gate) * clean + gate * self.strength * self.planted, dim=-1)

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        features = super().encode_text(texts, normalize=True)
        if isinstance(texts, list):
            is_target = torch.tensor([TARGET in text for text in texts], device=features.device)[:, None]
            features = torch.where(is_target, self.planted.expand_as(features), features)
        return features


def true_trigger() -> PatchBlendTrigger:
    return PatchBlendTrigger.patch(32, PATCH, "bottom-right", "white")


def planted_candidates(model: PlantedBackdoorCLIP) -> tuple[list[str], torch.Tensor]:
    names = [TARGET, "apple", "car", "dog", "house", "tree"]
    with torch.no_grad():
        embeddings = model.encode_text([f"a photo of a {name}." for name in names])
    return names, embeddings


def clean_images(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Smooth random images (dark enough that the detector is off) and captions."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=generator) * 0.6
    images = F.interpolate(low, size=32, mode="bilinear", align_corners=False)
    captions = [f"a photo of a {['apple', 'car', 'dog', 'house', 'tree'][i % 5]}." for i in range(n)]
    return images, captions
