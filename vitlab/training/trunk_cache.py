"""Train the last blocks on a cache of the frozen trunk's output: `python -m vitlab.finetune --cache-trunk`.

When only the last k encoder blocks and the head train, everything before them (patch embedding, class token,
position embedding and the first L - k blocks: the "trunk") is a fixed function of the input image. If the only
augmentation is a horizontal flip, each training image has exactly two possible inputs, so the trunk's output for
both can be computed once and reused every epoch. An epoch then runs only the last k blocks:

    ViT-B/16, the last 3 of 12 blocks training, per training image:
        without the cache: 12 blocks forward + 3 blocks backward
        with the cache:     3 blocks forward + 3 blocks backward (+ once, before epoch 1: 9 blocks forward x 2 views)

The price is memory and augmentation. The cache holds (tokens x width) numbers per view per image: CIFAR-100's
45,000 training images x 2 views x 197 tokens x 768 in bf16 is 27 GB. Rotation is impossible: a rotated image
would need its own trunk output. Validation images (one view each) are cached too; the test set is always evaluated
once, at the end, with the full model.

torchvision's ViT adds no dropout by default (`dropout=0.0`), so the trunk computes the same function in training
and in evaluation mode: training on the cache is training on the model, up to the cache's number format.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer
from tqdm.auto import tqdm

from vitlab.capture import geometry
from vitlab.data import BatchTransform, ImageDataset
from vitlab.errors import VitlabError


def trunk_forward(model: VisionTransformer, inputs: Tensor, frozen_blocks: int) -> Tensor:
    """The frozen trunk: normalised images (B, 3, S, S) -> tokens (B, T, D) after the first `frozen_blocks` blocks.

    The same steps as torchvision's `VisionTransformer.forward`, stopped before block `frozen_blocks`.
    """
    tokens = model._process_input(inputs)  # (B, N, D): one token per patch (torchvision's own patch embedding)
    class_token = model.class_token.expand(tokens.shape[0], -1, -1)  # (1, 1, D) -> (B, 1, D)
    tokens = torch.cat([class_token, tokens], dim=1)  # (B, T = N + 1, D)
    tokens = model.encoder.dropout(tokens + model.encoder.pos_embedding)  # (B, T, D)
    for block in list(model.encoder.layers)[:frozen_blocks]:
        tokens = block(tokens)  # (B, T, D)
    return tokens


class TrainableTop(nn.Module):
    """The end of a ViT that trains: its last `trainable_blocks` blocks, the final LayerNorm and the head.

    It holds the model's own modules, not copies: training the top trains the model, and the model's optimizer,
    state dict and checkpoints work unchanged.
    """

    def __init__(self, model: VisionTransformer, trainable_blocks: int) -> None:
        super().__init__()
        layers = list(model.encoder.layers)
        self.blocks = nn.Sequential(*layers[len(layers) - trainable_blocks :])
        self.norm = model.encoder.ln
        self.heads = model.heads

    def forward(self, tokens: Tensor) -> Tensor:
        """Trunk tokens (B, T, D) -> class logits (B, C), exactly as the full blocks would give them.

        Only the class token's output reaches the head, so the last block is computed for that one token: its
        attention reads every token (keys and values) but answers one query, and its MLP runs on one token instead
        of T. The same function, (T - 1) / T of the last block's MLP and attention queries saved.
        """
        if len(self.blocks) == 0:  # a linear probe: the head reads the trunk's class token
            return self.heads(self.norm(tokens[:, 0]))  # (B, D) -> (B, C)
        *early, last = self.blocks
        for block in early:
            tokens = block(tokens)  # (B, T, D)
        return self.heads(self.norm(class_token_output(last, tokens)))  # (B, D) -> (B, C)


def class_token_output(block: nn.Module, tokens: Tensor) -> Tensor:
    """A torchvision EncoderBlock's output for the class token alone: tokens (B, T, D) -> (B, D).

    Equal to `block(tokens)[:, 0]` (the block's own steps: LayerNorm, attention, dropout, residual, LayerNorm, MLP,
    residual), with the attention asked one query.
    """
    normed = block.ln_1(tokens)  # (B, T, D)
    attended, _ = block.self_attention(normed[:, :1], normed, normed, need_weights=False)  # (B, 1, D)
    first = tokens[:, :1] + block.dropout(attended)  # (B, 1, D)
    return (first + block.mlp(block.ln_2(first)))[:, 0]  # (B, D)


@dataclass
class TrunkCache:
    """The trunk's output for every image of a dataset, under one or more views (view 0 as is, view 1 mirrored)."""

    tokens: Tensor  # (N, V, T, D)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def views(self) -> int:
        return self.tokens.shape[1]

    def take(self, n: int) -> TrunkCache:
        """The first `n` images (slices are views: nothing is copied), as `ImageDataset.take`."""
        return TrunkCache(self.tokens[:n], self.labels[:n])

    def batches(
        self, batch_size: int, order: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (tokens (b, T, D), labels (b,)) in `order` (int64 (M,), default: all images in turn).

        With two views each image's view is drawn at random per batch (p = 0.5 each): the random flip. `generator`
        must live on the cache's device. The tokens come out as float32 whatever the cache stores.
        """
        order = torch.arange(len(self), device=self.tokens.device) if order is None else order  # (M,)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]  # (b,)
            if self.views == 1:
                view = torch.zeros_like(index)  # (b,)
            else:
                view = torch.randint(self.views, index.shape, generator=generator, device=index.device)  # (b,)
            # Stored in bf16 to halve the memory, handed on in float32: the residual stream of the trainable blocks
            # then carries the same precision as in a run without the cache.
            yield self.tokens[index, view].float(), self.labels[index]  # (b, T, D), (b,)


def check_settings(max_rotation: float, trainable_blocks: int | None, distributed: bool) -> None:
    """Refuse the `--cache-trunk` settings a cache cannot serve (VitlabError, with what to do instead)."""
    if distributed:
        raise VitlabError("--cache-trunk runs in one process; start it with python -m vitlab.finetune, not torchrun.")
    if max_rotation != 0:
        raise VitlabError(
            f"--cache-trunk allows the flip as the only augmentation, but --max-rotation is {max_rotation}: every "
            f"rotated image would need its own trunk output. Use --max-rotation 0 (the default with --cache-trunk), "
            f"or drop --cache-trunk."
        )
    if trainable_blocks is None:
        raise VitlabError(
            "--cache-trunk needs a frozen trunk, but --trainable-blocks is 'all', which trains the whole model: "
            "there is nothing to cache. Choose a number of blocks, e.g. --trainable-blocks 2, or drop --cache-trunk."
        )


def frozen_blocks_for(model: VisionTransformer, trainable_blocks: int) -> int:
    """How many leading blocks the trunk has; refuses a setting where nothing before the top is frozen."""
    num_blocks = len(model.encoder.layers)
    if not 0 <= trainable_blocks < num_blocks:
        raise VitlabError(
            f"--cache-trunk needs a frozen trunk, but --trainable-blocks {trainable_blocks} of {num_blocks} trains "
            f"the whole model (embeddings included), so there is nothing to cache. Choose --trainable-blocks 0 to "
            f"{num_blocks - 1}, or drop --cache-trunk."
        )
    return num_blocks - trainable_blocks


def cache_bytes(model: VisionTransformer, num_images: int, views: int, dtype: torch.dtype) -> int:
    """Bytes a cache of `num_images` x `views` trunk outputs takes: (N, V, T, D) numbers of `dtype`."""
    tokens = geometry(model).num_tokens  # T: the class token and the patches
    return num_images * views * tokens * model.hidden_dim * torch.finfo(dtype).bits // 8


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: CUDA's free memory, or Linux's MemAvailable for the CPU; None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if device.type == "cpu" and meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    return None


def check_fits(needed: int, device: torch.device, headroom: float = 0.8) -> None:
    """Refuse a cache that would take more than `headroom` of the device's free memory."""
    free = available_bytes(device)
    if free is not None and needed > headroom * free:
        raise VitlabError(
            f"--cache-trunk needs {needed / 2**30:.1f} GiB for the cached trunk outputs, but {device} has only "
            f"{free / 2**30:.1f} GiB free (the cache may take {headroom:.0%} of it). Use fewer images (--subset), "
            f"more --trainable-blocks (a shorter trunk caches the same size), or train without --cache-trunk."
        )


@torch.no_grad()
def build_cache(
    model: VisionTransformer,
    dataset: ImageDataset,
    transform: BatchTransform,
    frozen_blocks: int,
    *,
    views: int,
    batch_size: int,
    bf16: bool = False,
    description: str = "caching the trunk",
    show_progress: bool = True,
) -> TrunkCache:
    """Run the trunk once over every image (and its mirror image, with `views=2`) and keep the tokens.

    Args:
        model: the ViT; its first `frozen_blocks` blocks and its embeddings must be frozen.
        dataset: uint8 images (N, 3, H, W) and labels (N,), on the device where the cache should live.
        transform: the evaluation transform (resize + normalise, no augmentation).
        views: 1 (images as they are) or 2 (as they are, and mirrored left-right: the flip augmentation).
        bf16: run the trunk under bf16 autocast and store bf16, half the memory of float32 (for runs that train
            under bf16 autocast anyway).
    """
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views}")
    dtype = torch.bfloat16 if bf16 else torch.float32
    autocast = torch.autocast(dataset.images.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    was_training = model.training
    model.eval()
    images = dataset.images
    shape = (len(dataset), views, geometry(model).num_tokens, model.hidden_dim)  # (N, V, T, D)
    tokens = torch.empty(shape, dtype=dtype, device=images.device)
    with tqdm(total=len(dataset) * views, desc=description, unit="img", disable=not show_progress, leave=False) as bar:
        for start in range(0, len(dataset), batch_size):
            batch = images[start : start + batch_size]  # (b, 3, H, W) uint8
            for view in range(views):
                shown = batch.flip(-1) if view == 1 else batch  # view 1: mirrored left-right
                with autocast:
                    out = trunk_forward(model, transform(shown), frozen_blocks)  # (b, T, D)
                tokens[start : start + batch_size, view] = out.to(dtype)
                bar.update(batch.shape[0])
    model.train(was_training)
    return TrunkCache(tokens, dataset.labels)


@dataclass
class CachedTrunk:
    """What `--cache-trunk` trains on: the model's trainable top and the trunk's output for train and val."""

    top: TrainableTop
    train: TrunkCache  # two views per image: as is and mirrored (the random flip)
    val: TrunkCache  # one view per image: no augmentation

    @property
    def nbytes(self) -> int:
        """Memory the cached tokens take, train and val together."""
        return self.train.tokens.nbytes + self.val.tokens.nbytes


def cache_trunk(
    model: VisionTransformer,
    train: ImageDataset,
    val: ImageDataset,
    trainable_blocks: int,
    transform: BatchTransform,
    *,
    batch_size: int,
    bf16: bool = False,
    show_progress: bool = True,
) -> CachedTrunk:
    """Cache the frozen trunk's output for `train` (2 views) and `val` (1 view), on the datasets' device.

    With `bf16` the trunk runs under bf16 autocast and the cache stores bf16, half the memory of float32.
    Raises VitlabError when nothing is frozen or the cache would not fit in the device's free memory.
    """
    frozen_blocks = frozen_blocks_for(model, trainable_blocks)
    dtype = torch.bfloat16 if bf16 else torch.float32
    check_fits(cache_bytes(model, 2 * len(train) + len(val), 1, dtype), train.images.device)
    common = {"batch_size": batch_size, "bf16": bf16, "show_progress": show_progress}
    train_cache = build_cache(model, train, transform, frozen_blocks, views=2, description="caching train", **common)
    val_cache = build_cache(model, val, transform, frozen_blocks, views=1, description="caching val", **common)
    return CachedTrunk(TrainableTop(model, trainable_blocks), train_cache, val_cache)
