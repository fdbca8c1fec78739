"""Formula-driven images for pretraining without natural images: iterated-function-system (IFS) fractals.

After FractalDB (Kataoka et al., ACCV 2020, "Pre-training without Natural Images") and Nakashima et al. (AAAI 2022,
"Can Vision Transformers Learn without Natural Images?"): a *class* is one IFS, a few affine maps of the plane
w_i(p) = A_i p + b_i, each picked with probability p_i. Its attractor, the set the "chaos game" converges to (start
anywhere, apply a randomly chosen map, repeat), is a self-similar fractal. Every image of a class is a fresh render
of that attractor, so a ViT sees endless images with sharp edges, fine texture and structure at every scale, all
computed from a seed: no download, no natural image.

How vitlab draws them (all of it seeded, vectorised over a batch of images, on torch's CPU generator):
- **Classes** (`make_systems`): each map is A = R(theta) diag(s1, s2) R(phi), with singular values s1, s2 in
  [0.25, 0.8] (so every map contracts and the attractor exists) and a translation b in [-1, 1]^2; 2 to 4 maps per
  class, picked with probability proportional to |det A| (FractalDB's rule: each map covers its share of the
  attractor).
- **Rendering** (`render`): 384 parallel chaos-game chains per image, 24 steps each, the first 8 thrown away (the
  chains have converged by then), so about 6,000 points per image, dealt out to three copies of the attractor. Each
  copy is rotated by a random angle, scaled to 0.5-1.2 times the image side and centred anywhere in the image, so
  the edges crop them at random (no position is special), then everything is splatted at twice the resolution,
  averaged down (anti-aliasing) and softened with a 1-px Gaussian brush (why: `_soft_brush`).
- **Colour**: like the synthetic shapes vitlab fine-tunes on (`vitlab.data.shapes`): a dark background and a light
  fractal, but here the fractal's brightness follows the point density and each map paints its own hue, so the
  parts of the fractal differ. The background is flat, not noisy: the pretraining predicts pixels, and noise
  cannot be predicted; with the shapes' noise its random gradients drowned the fractal's (measured, BENCHMARKS.md).

    systems = make_systems(100, seed=0)                 # 100 classes
    images, labels = render(systems, 256, generator)    # uint8 (256, 3, 32, 32), int64 (256,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_MAPS = 4  # affine maps per system; systems with fewer pad with zero-probability maps
_MIN_MAPS = 2
_SINGULAR_RANGE = (0.25, 0.8)  # every map contracts: the chaos game converges
_CHAINS, _STEPS, _BURN_IN = 384, 24, 8  # per image: 384 chains x 16 kept steps = 6,144 points
_INSTANCES = 3  # copies of the class's fractal per image, each with a third of the chains
_FILL_RANGE = (0.5, 1.2)  # each copy's extent, as a share of the image side: the edges often crop it
_BRUSH_SIGMA, _BRUSH_RADIUS = 1.0, 2  # the soft brush: a Gaussian of 1 px, cut off at 2 px
_BACKGROUND_MAX = 80.0  # background channels in [0, 80], as the shapes
_FOREGROUND_MIN = 175.0  # map colours' channels in [175, 255], as the shapes' colours


@dataclass(frozen=True)
class IFSSystems:
    """`num_classes` iterated function systems: maps (K, M, 2, 3) as [A | b] rows, probabilities (K, M)."""

    maps: Tensor  # float32 (K, MAX_MAPS, 2, 3): point -> A @ point + b
    probabilities: Tensor  # float32 (K, MAX_MAPS), each row sums to 1 (padding maps have 0)

    @property
    def num_classes(self) -> int:
        return self.maps.shape[0]


def make_systems(num_classes: int, seed: int) -> IFSSystems:
    """Draw `num_classes` contractive IFS classes from `seed` (the same seed gives the same classes everywhere)."""
    if num_classes < 1:
        raise ValueError(f"need at least one class, got {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    k, m = num_classes, MAX_MAPS
    low, high = _SINGULAR_RANGE
    singular = low + (high - low) * torch.rand(k, m, 2, generator=gen)  # (K, M, 2)
    theta, phi = (2 * math.pi * torch.rand(k, m, generator=gen) for _ in range(2))  # (K, M) each
    flip = torch.where(torch.rand(k, m, generator=gen) < 0.5, -1.0, 1.0)  # (K, M): mirror some maps
    linear = _rotation(theta) @ torch.diag_embed(singular * torch.stack([flip, torch.ones_like(flip)], -1))
    linear = linear @ _rotation(phi)  # (K, M, 2, 2) = R(theta) diag(s1, +-s2) R(phi)
    shift = 2 * torch.rand(k, m, 2, generator=gen) - 1  # (K, M, 2)
    count = torch.randint(_MIN_MAPS, m + 1, (k,), generator=gen)  # (K,) maps in use per system
    used = torch.arange(m)[None, :] < count[:, None]  # (K, M)
    weight = linear.det().abs() * used  # FractalDB: p_i proportional to |det A_i|
    return IFSSystems(torch.cat([linear, shift[..., None]], dim=-1), weight / weight.sum(dim=1, keepdim=True))


def render(
    systems: IFSSystems, num_images: int, generator: torch.Generator, image_size: int = 32,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Render `num_images` fresh images of random classes (or of `labels`, int64 (N,)).

    Returns:
        images uint8 (N, 3, S, S) and labels int64 (N,).
    """
    if labels is None:
        labels = torch.randint(systems.num_classes, (num_images,), generator=generator)  # (N,)
    points, which = _chaos_game(systems, labels, generator)  # (N, P, 2), (N, P)
    points = _place(points, image_size, generator)  # (N, P, 2) in pixel units of the 2x canvas
    density = _splat(points, which, image_size * 2)  # (N, M, 2S, 2S) point counts per map
    density = torch.nn.functional.avg_pool2d(density, 2)  # (N, M, S, S): anti-aliased
    density = _soft_brush(density)  # (N, M, S, S)
    return _colour(density, generator), labels


def _rotation(angle: Tensor) -> Tensor:
    """Angles (...) -> rotation matrices (..., 2, 2)."""
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def _chaos_game(systems: IFSSystems, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Run the chaos game: points (N, P, 2) on each image's attractor, and which map made each point (N, P)."""
    n = len(labels)
    maps = systems.maps[labels]  # (N, M, 2, 3)
    probabilities = systems.probabilities[labels]  # (N, M)
    point = 2 * torch.rand(n, _CHAINS, 2, generator=gen) - 1  # (N, C, 2) anywhere: contraction pulls it in
    # Every step's map choices at once: one multinomial call instead of one per step (it is the slow part).
    choices = torch.multinomial(probabilities, _STEPS * _CHAINS, replacement=True, generator=gen)  # (N, T*C)
    choices = choices.view(n, _STEPS, _CHAINS)  # (N, T, C)
    kept, kept_maps = [], []
    for step in range(_STEPS):
        choice = choices[:, step]  # (N, C)
        chosen = maps.gather(1, choice[..., None, None].expand(-1, -1, 2, 3))  # (N, C, 2, 3)
        point = (chosen[..., :2] @ point[..., None]).squeeze(-1) + chosen[..., 2]  # (N, C, 2)
        if step >= _BURN_IN:
            kept.append(point)
            kept_maps.append(choice)
    return torch.cat(kept, dim=1), torch.cat(kept_maps, dim=1)  # (N, P, 2), (N, P) with P = C * kept steps


def _place(points: Tensor, image_size: int, gen: torch.Generator) -> Tensor:
    """Put `_INSTANCES` copies of each cloud (N, P, 2) into the image, each rotated, scaled and centred anywhere.

    The chains are dealt out to the copies, so each copy is the whole attractor at a third of the density. The
    copies are often larger than the image and their centres are uniform over it, so the edges crop them at random
    and the fractal covers every part of the image alike: no position is special (always background, say). That
    matters for what the position embeddings learn: only where a patch sits relative to the others.
    """
    n, num_points, canvas = points.shape[0], points.shape[1], 2 * image_size
    low, high = points.amin(dim=1, keepdim=True), points.amax(dim=1, keepdim=True)  # (N, 1, 2) each
    extent = (high - low).amax(dim=-1, keepdim=True).clamp(min=1e-6)  # (N, 1, 1)
    unit = (points - (low + high) / 2) / extent  # (N, P, 2) in [-0.5, 0.5]
    copy = torch.arange(num_points) % _CHAINS % _INSTANCES  # (P,) which copy each point belongs to (by chain)
    angle = (2 * math.pi * torch.rand(n, _INSTANCES, generator=gen))[:, copy]  # (N, P): each copy its own angle
    cos, sin = angle.cos(), angle.sin()
    x, y = unit.unbind(-1)  # (N, P) each
    unit = torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1)  # (N, P, 2) turned by the copy's angle
    low_fill, high_fill = _FILL_RANGE
    fill = low_fill + (high_fill - low_fill) * torch.rand(n, _INSTANCES, 1, generator=gen)  # (N, K, 1)
    # Centres anywhere in the image and a quarter beyond each edge, so the edges are covered as often as the middle.
    centre = canvas * (1.5 * torch.rand(n, _INSTANCES, 2, generator=gen) - 0.25)  # (N, K, 2)
    return centre[:, copy] + unit * fill[:, copy] * canvas  # (N, P, 2)


def _splat(points: Tensor, which: Tensor, size: int) -> Tensor:
    """Count points per pixel and per map: points (N, P, 2), which (N, P) -> (N, MAX_MAPS, size, size)."""
    n = points.shape[0]
    pixel = points.floor().long()  # (N, P, 2) as (x, y)
    inside = ((pixel >= 0) & (pixel < size)).all(dim=-1)  # (N, P): points beyond the edge are cropped away
    pixel = pixel.clamp(0, size - 1)
    flat = (which * size + pixel[..., 1]) * size + pixel[..., 0]  # (N, P) index into (M, size, size)
    counts = torch.zeros(n, MAX_MAPS * size * size)
    counts.scatter_add_(1, flat, inside.float())
    return counts.view(n, MAX_MAPS, size, size)


def _soft_brush(density: Tensor) -> Tensor:
    """Blur each map's density (N, M, S, S) with a Gaussian of `_BRUSH_SIGMA` pixels, separably, edges replicated.

    Why: the pretraining predicts hidden patches from their neighbours, and a soft-brushed fractal makes a patch's
    neighbours tell more about it. Measured (BENCHMARKS.md): with the blur the position embeddings reached a
    Spearman of -0.59 after 700 steps; the same run on sharp dots was still at +0.05.
    """
    offsets = torch.arange(-_BRUSH_RADIUS, _BRUSH_RADIUS + 1, dtype=torch.float32)  # (2r + 1,)
    kernel = torch.exp(-(offsets**2) / (2 * _BRUSH_SIGMA**2))
    kernel = kernel / kernel.sum()
    n, m, size, _ = density.shape
    flat = density.reshape(n * m, 1, size, size)  # (N*M, 1, S, S): one channel per map
    r = _BRUSH_RADIUS
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))  # along x
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1))  # along y
    return flat.view(n, m, size, size)


def _colour(density: Tensor, gen: torch.Generator) -> Tensor:
    """Per-map densities (N, M, S, S) -> uint8 images (N, 3, S, S): light fractal, dark flat background."""
    n, m, size, _ = density.shape
    total = density.sum(dim=1, keepdim=True)  # (N, 1, S, S)
    # Brightness rises with density and saturates: a pixel hit a few times is already clearly part of the fractal.
    coverage = 1 - torch.exp(-total / 2)  # (N, 1, S, S) in [0, 1)
    share = density / total.clamp(min=1e-6)  # (N, M, S, S): which map painted this pixel
    palette = _FOREGROUND_MIN + (255 - _FOREGROUND_MIN) * torch.rand(n, m, 3, generator=gen)  # (N, M, 3)
    foreground = torch.einsum("nmhw,nmc->nchw", share, palette)  # (N, 3, S, S)
    background = _BACKGROUND_MAX * torch.rand(n, 3, 1, 1, generator=gen)  # (N, 3, 1, 1), flat: see the docstring
    pixels = coverage * foreground + (1 - coverage) * background  # (N, 3, S, S)
    return pixels.clamp(0, 255).round().to(torch.uint8)
