"""Batched paired augmentation on the training device.

One geometric draw per sample (a random resized crop and a horizontal flip) is applied to both
views through a single sampling grid, so the RGB and depth images of a pair stay aligned.
Photometric jitter is drawn per view and respects what a difference image encodes: a signed
change around mid-grey (0.5). Its "contrast" scales the change around mid-grey (a stronger or
weaker movement); for RGB, saturation mixes each channel's change towards the grey change, and
random grayscale drops colour. There is no brightness jitter: an offset would claim that every
pixel changed, and on the synthetic data the original's multiplicative brightness jitter (which
moves mid-grey itself) stopped pre-training from learning at all. Depth gets the contrast jitter
only (saturation, hue and grayscale mean nothing on one channel). Hue jitter is not offered:
rotating the hue of a difference has no physical meaning. Evaluation uses a deterministic centre
crop, identical for both views.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_CROP_TRIES = 10


@dataclass
class PairAugment:
    """Turns decoded batches into network input.

    `__call__(rgb (B,3,S,S), depth (B,1,S,S))`, both float in [0, 1] on any device, returns
    x (B,4,H,W) normalised, H = W = `image_size`: channels 0-2 RGB, channel 3 depth.
    Random parameters are drawn from torch's global CPU generator (or `generator`), so the
    result does not depend on the device.
    """
    image_size: int
    train: bool
    rgb_mean: tuple[float, float, float]
    rgb_std: tuple[float, float, float]
    depth_mean: float
    depth_std: float
    crop_low: float = 0.2
    flip: bool = True
    jitter: float = 0.0
    grayscale_p: float = 0.0

    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        batch, load_size = rgb.shape[0], rgb.shape[-1]
        theta = self.crop_theta(batch, load_size, generator).to(rgb.device)
        grid = F.affine_grid(theta, [batch, 1, self.image_size, self.image_size], align_corners=False)
        rgb = F.grid_sample(rgb, grid, mode="bilinear", padding_mode="border", align_corners=False)
        depth = F.grid_sample(depth, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.train and self.jitter > 0:
            self._jitter_rgb_(rgb, generator)
            self._amplitude_(depth, generator)
        # Normalised straight into the (B,4,H,W) output: one pass per view, no concatenation.
        std = torch.tensor([*self.rgb_std, self.depth_std], device=rgb.device).view(1, 4, 1, 1)
        mean = torch.tensor([*self.rgb_mean, self.depth_mean], device=rgb.device).view(1, 4, 1, 1)
        x = torch.empty(batch, 4, self.image_size, self.image_size, device=rgb.device)
        torch.addcmul(-mean[:, :3] / std[:, :3], rgb, 1 / std[:, :3], out=x[:, :3])
        torch.addcmul(-mean[:, 3:] / std[:, 3:], depth, 1 / std[:, 3:], out=x[:, 3:])
        return x

    def crop_theta(self, batch: int, load_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Affine matrices (B, 2, 3) mapping output to input coordinates in [-1, 1].

        Training: torchvision's RandomResizedCrop rule (area fraction in [crop_low, 1], aspect
        ratio log-uniform in [3/4, 4/3], up to 10 tries, then the centre crop) and a flip with
        probability 0.5. Evaluation: the centre `image_size` square of the `load_size` image.
        """
        if not self.train:
            frac = self.image_size / load_size
            theta = torch.zeros(batch, 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = frac
            return theta
        area = torch.empty(batch, _CROP_TRIES).uniform_(self.crop_low, 1.0, generator=generator)
        log_ratio = torch.empty(batch, _CROP_TRIES).uniform_(math.log(3 / 4), math.log(4 / 3),
                                                             generator=generator)
        ratio = log_ratio.exp()
        width, height = (area * ratio).sqrt(), (area / ratio).sqrt()
        valid = (width <= 1) & (height <= 1)
        first = valid.float().argmax(dim=1, keepdim=True)
        has_valid = valid.any(dim=1)
        width = torch.where(has_valid, width.gather(1, first)[:, 0], torch.ones(batch))
        height = torch.where(has_valid, height.gather(1, first)[:, 0], torch.ones(batch))
        # Crop centre uniform over positions that keep the box inside the image.
        cx = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - width)
        cy = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - height)
        sign = torch.ones(batch)
        if self.flip:
            sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0] = width * sign
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = height
        theta[:, 1, 2] = cy
        return theta

    def _factors(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Per-sample factors (B,1,1,1) uniform in [1 - jitter, 1 + jitter]."""
        lo = max(0.0, 1 - self.jitter)
        return torch.empty(batch).uniform_(lo, 1 + self.jitter, generator=generator).to(device).view(-1, 1, 1, 1)

    def _amplitude_(self, x: torch.Tensor, generator: torch.Generator | None) -> None:
        """In place on x (B,C,H,W): scale each sample's change around mid-grey by a factor in
        [1 - jitter, 1 + jitter], i.e. x * f + 0.5 (1 - f), clamped to [0, 1]."""
        factor = self._factors(x.shape[0], generator, x.device)
        torch.addcmul(0.5 * (1 - factor), x, factor, out=x).clamp_(0, 1)

    def _jitter_rgb_(self, rgb: torch.Tensor, generator: torch.Generator | None) -> None:
        """In place on rgb (B,3,H,W): amplitude, then saturation (each channel mixed with the
        grey change: rgb * s + grey (1 - s), clamped), then random grayscale."""
        b = rgb.shape[0]
        self._amplitude_(rgb, generator)
        saturation = self._factors(b, generator, rgb.device)
        gray = _gray(rgb)
        rgb.mul_(saturation).add_(gray.mul_(1 - saturation)).clamp_(0, 1)
        if self.grayscale_p > 0:
            chosen = (torch.rand(b, generator=generator) < self.grayscale_p).nonzero()[:, 0].to(rgb.device)
            picked = rgb.index_select(0, chosen)
            rgb.index_copy_(0, chosen, _gray(picked).expand_as(picked))


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    """Luma (B,1,H,W) of rgb (B,3,H,W) with ITU-R 601 weights."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=rgb.device).view(1, 3, 1, 1)
    return (rgb * weights).sum(1, keepdim=True)


def add_augment_args(parser: argparse.ArgumentParser, crop_low: float, jitter: float,
                     grayscale_p: float) -> None:
    """Training-augmentation flags; defaults differ between pre-training and fine-tuning."""
    group = parser.add_argument_group("augmentation")
    group.add_argument("--crop_low", type=float, default=crop_low,
                       help="smallest crop area fraction of the random resized crop (1 = whole image)")
    group.add_argument("--no_flip", action="store_true", help="no random horizontal flips")
    group.add_argument("--jitter", type=float, default=jitter,
                       help="strength of the per-view jitter of the change around mid-grey (and RGB saturation), 0 = off")
    group.add_argument("--grayscale_p", type=float, default=grayscale_p,
                       help="probability of turning the RGB view gray")


def from_args(args: argparse.Namespace, train: bool) -> PairAugment:
    """The augmentation the flags describe; `train=False` gives the deterministic test transform."""
    return PairAugment(image_size=args.image_size, train=train, rgb_mean=tuple(args.rgb_mean),
                       rgb_std=tuple(args.rgb_std), depth_mean=args.depth_mean,
                       depth_std=args.depth_std, crop_low=getattr(args, "crop_low", 1.0),
                       flip=not getattr(args, "no_flip", True), jitter=getattr(args, "jitter", 0.0),
                       grayscale_p=getattr(args, "grayscale_p", 0.0))
