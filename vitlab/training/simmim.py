"""The pretraining objective: masked image modelling (SimMIM, Xie et al. 2022) plus a class loss, on a torchvision ViT.

SimMIM in four lines: cut the image into patches, replace a random half of the patch embeddings by one learned
`mask_token`, run the encoder as usual, and let a single linear layer predict the hidden patches' pixels from their
output tokens (L1 loss on the masked patches only). To fill a hole the model must look at the neighbouring patches,
and to know which patches are neighbours it must learn where each one sits: position embeddings with 2-D structure
and local attention heads, exactly what the lessons want to show.

An optional second, supervised signal sits on the class token: which generated class (which fractal system) the
image is, `loss = L1(masked pixels) + class_weight * cross_entropy(class)`. vitlab's pretraining leaves it off
(`class_weight=0`): measured with weight 1, the pixel loss stalled at the "predict the average colour" level and
neither position structure nor local heads appeared, while SimMIM alone found both within 1,200 steps (BENCHMARKS.md).

An optional third signal gives the class token a job without labels: predict the whole image at one pixel per patch
(each patch's mean colour), `+ global_weight * L1`. SimMIM's loss reads only the patch tokens, so otherwise the class
token's output, which fine-tuning's head reads, is never trained (measured on the photos: docs/pretrained-base.md).

    objective = MaskedImageModel(vit, mask_ratio=0.5, mask_block=1)
    mask = objective.random_mask(batch_size, generator)            # bool (B, patches), half of them True
    pixels, logits = objective(images, mask)                       # (B, patches, 3 p p), (B, 100)
    loss, parts = objective.loss(images, labels, mask)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchvision.models import VisionTransformer


class MaskedImageModel(nn.Module):
    """A torchvision `VisionTransformer` wrapped for SimMIM: a mask token and a linear pixel decoder.

    The wrapped `vit` is used as is (its patch projection, class token, position embedding, blocks, final norm and
    classification head), so its state dict is the pretrained base to ship.
    """

    def __init__(self, vit: VisionTransformer, mask_ratio: float = 0.5, mask_block: int = 1,
                 class_weight: float = 0.0, global_weight: float = 0.0) -> None:
        super().__init__()
        grid = vit.image_size // vit.patch_size
        if grid % mask_block:
            raise ValueError(f"mask_block={mask_block} must divide the {grid}x{grid} patch grid")
        self.vit = vit
        self.mask_ratio, self.mask_block, self.class_weight = mask_ratio, mask_block, class_weight
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.hidden_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(vit.hidden_dim, 3 * vit.patch_size**2)  # one token -> its patch's pixels
        self.global_weight = global_weight
        # The class token -> the whole image at one pixel per patch (3 x grid x grid), for the global loss.
        self.global_decoder = nn.Linear(vit.hidden_dim, 3 * grid**2) if global_weight else None

    def random_mask(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """bool (B, patches): `mask_ratio` of the (mask_block x mask_block)-patch squares, chosen per image.

        SimMIM masks 32-px squares of 16-px patches (mask_block 2). vitlab's 4-px patches are small already, and
        single patches (mask_block 1) leave each hole with visible neighbours to read from: that is what teaches
        the position embeddings and the first blocks to look nearby.
        """
        grid = self.vit.image_size // self.vit.patch_size
        cells = grid // self.mask_block  # mask squares per side
        hidden = round(self.mask_ratio * cells**2)
        order = torch.rand(batch_size, cells**2, generator=generator).argsort(dim=1)  # (B, cells^2)
        mask = torch.zeros(batch_size, cells**2, dtype=torch.bool)
        mask.scatter_(1, order[:, :hidden], True)
        mask = rearrange(mask, "b (ch cw) -> b ch cw", ch=cells)  # (B, cells, cells)
        mask = mask.repeat_interleave(self.mask_block, 1).repeat_interleave(self.mask_block, 2)  # (B, grid, grid)
        return mask.flatten(1)  # (B, patches)

    def encode(self, images: Tensor, mask: Tensor) -> Tensor:
        """images (B, 3, S, S) normalised, mask bool (B, patches) -> encoded tokens (B, 1 + patches, hidden)."""
        tokens = self.vit._process_input(images)  # (B, patches, hidden): torchvision's patchify + projection
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        class_token = self.vit.class_token.expand(tokens.shape[0], -1, -1)  # (B, 1, hidden)
        return self.vit.encoder(torch.cat([class_token, tokens], dim=1))  # (B, 1 + patches, hidden)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, S, S) normalised, mask bool (B, patches) -> (pixels (B, patches, 3 p p), logits (B, K))."""
        encoded = self.encode(images, mask)  # (B, 1 + patches, hidden)
        return self.decoder(encoded[:, 1:]), self.vit.heads(encoded[:, 0])

    def loss(self, images: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss and its parts ("pixel": L1 on masked patches, "class": cross-entropy, "global": L1 of the
        class token's small image), all 0-d."""
        encoded = self.encode(images, mask)  # (B, 1 + patches, hidden)
        pixels, logits = self.decoder(encoded[:, 1:]), self.vit.heads(encoded[:, 0])
        p = self.vit.patch_size
        target = rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=p, p2=p)  # (B, patches, 3pp)
        per_patch = (pixels - target).abs().mean(dim=-1)  # (B, patches)
        pixel_loss = (per_patch * mask).sum() / mask.sum().clamp(min=1)
        class_loss = F.cross_entropy(logits, labels)
        total = pixel_loss + self.class_weight * class_loss
        global_loss = torch.zeros(())
        if self.global_decoder is not None:
            small = F.avg_pool2d(images, p).flatten(1)  # (B, 3 * grid * grid): each patch's mean colour
            global_loss = (self.global_decoder(encoded[:, 0]) - small).abs().mean()
            total = total + self.global_weight * global_loss
        accuracy = (logits.argmax(dim=-1) == labels).float().mean()
        return total, {"pixel": pixel_loss.detach(), "class": class_loss.detach(), "class_acc": accuracy,
                       "global": global_loss.detach()}
