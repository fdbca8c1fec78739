"""Lesson 14: token norms, and the high-norm outliers of Darcet et al. 2023.

Every token leaves every block as a vector; its length (L2 norm) says how loud it is in the residual stream. In
"Vision Transformers Need Registers" (Darcet et al. 2023) large, long-trained ViTs (DINOv2, OpenCLIP, DeiT-III)
turned out to hold a few patch tokens, mostly on plain background, whose norms are about ten times the others'
from the middle blocks on. They carry global information instead of their patch's content, the class token
attends to them much more than to an ordinary patch, and they are what makes those models' attention maps spotty.
Giving the model a few extra "register" tokens to think in makes them disappear.

This lesson measures the norms of every token after every block, flags outliers and asks the paper's questions:
are there any, where do they sit (grid position; on the shapes also object or background), and does the class
token in the next block attend to them more than their share of tokens? The rule, written out in the lesson and
asserted equal to vitlab's: a patch is an outlier when its norm exceeds FACTOR times the median patch norm of the
same image in the same block. A small model trained briefly may have none: then the lesson says so and shows the
loudest patches it did find.

Builds on: vitlab/analysis/norms.py (`token_norms`, `high_norm_tokens`, `outlier_positions`, `outlier_attention`),
vitlab/capture.py (`capture_forward`), vitlab/analysis/localization.py (`object_patches`).

Run: python lessons/14_token_norms.py [--factor X] [--arch vit_b_16 | --checkpoint PATH] [--out DIR]
Figures: token_norms_by_block.png (per block: median, 99th percentile and largest patch norm, the class token's
norm and the outlier threshold), high_norm_tokens.png (a few images' norm maps in the block with the loudest patch,
outliers or the loudest candidates marked, and how often each grid position is flagged).

Questions:
1. Why does the rule compare with the median patch norm and not the mean? What would a few tokens with ten times
   the usual norm do to the mean?
2. The norms of all tokens grow with depth. Why does a residual stream tend to do that, and why does this lesson
   compare each token with its own block's median instead of with a fixed number?
3. Darcet et al. found outliers only in large models trained for long. If the demo model has none, what about it
   (size, training time, image size, task) could explain that? Try --arch vit_b_16.
4. If a token is an outlier and the class token gives it five times its share of attention, what does that say
   about reading the class token's attention map as "where the model looks"?
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

from vitlab.analysis.localization import object_patches
from vitlab.analysis.norms import DEFAULT_FACTOR, high_norm_tokens, outlier_attention, outlier_positions, token_norms
from vitlab.capture import capture_forward, geometry
from vitlab.cli import Rule, number_flag
from vitlab.plotting import draw_overlay, style_depth_axes
from vitlab.teaching.lesson import Subject, explain, print_questions, run_lesson, save, start

FIGURES = ("token_norms_by_block.png", "high_norm_tokens.png")
SHOWN = 5  # images in the map figure


# --factor, checked while parsing, before any model is loaded: a multiple of the median patch norm, above 1.
FACTOR = Rule(1, 1000, f"--factor {DEFAULT_FACTOR:g}", whole=False, low_open=True)


def norms_by_hand(hidden_states: list[Tensor]) -> Tensor:
    """The L2 norm written out: sqrt of the sum of squares over the hidden dimension -> (blocks, B, tokens)."""
    return torch.stack([state.pow(2).sum(dim=-1).sqrt() for state in hidden_states])


def outliers_by_hand(norms: Tensor, factor: float) -> Tensor:
    """The rule: a patch (token 1 on) louder than factor x its image's median patch norm. (B, T) -> (B, T) bool."""
    patches = norms[:, 1:]  # the class token (token 0) is not a patch
    median = patches.median(dim=1, keepdim=True).values  # (B, 1)
    return torch.cat([torch.zeros_like(norms[:, :1], dtype=torch.bool), patches > factor * median], dim=1)


def check_against_vitlab(hidden_states: list[Tensor], factor: float) -> Tensor:
    """Assert vitlab's norms and outlier rule equal the lesson's; return the norms (blocks, B, tokens)."""
    norms = token_norms(hidden_states)
    torch.testing.assert_close(norms, norms_by_hand(hidden_states), msg=lambda why: (
        f"vitlab's token_norms differs from the lesson's norms_by_hand: {why}"))
    for block in range(len(norms)):
        if not torch.equal(high_norm_tokens(norms[block], factor), outliers_by_hand(norms[block], factor)):
            raise AssertionError(f"vitlab's high_norm_tokens differs from the lesson's outliers_by_hand in "
                                 f"block {block + 1}")
    return norms


def loudness(norms: Tensor) -> Tensor:
    """Each patch's norm over its image's median patch norm: (blocks, B, T) -> (blocks, B, patches)."""
    patches = norms[:, :, 1:]
    return patches / patches.median(dim=2, keepdim=True).values


def figure_norms(norms: Tensor, factor: float, title: str) -> Figure:
    """Per block: patch-norm median, 99th percentile and maximum; the class token's norm; the outlier threshold."""
    fig = Figure(figsize=(6.8, 4.3), layout="constrained")
    ax = fig.add_subplot()
    blocks = torch.arange(1, len(norms) + 1).numpy()
    patches = norms[:, :, 1:].flatten(1)  # (blocks, B * patches)
    median = norms[:, :, 1:].median(dim=2).values.mean(dim=1)  # (blocks,) mean over images of each image's median
    ax.plot(blocks, median.numpy(), "o-", label="patch tokens: median")
    ax.plot(blocks, patches.quantile(0.99, dim=1).numpy(), "s--", label="patch tokens: 99th percentile")
    ax.plot(blocks, patches.amax(dim=1).numpy(), "^:", label="patch tokens: largest")
    ax.plot(blocks, norms[:, :, 0].mean(dim=1).numpy(), "d-", label="class token (mean over images)")
    ax.plot(blocks, (factor * median).numpy(), color="grey", linestyle="--", label=f"outlier threshold ({factor:g}x "
            f"median)")
    style_depth_axes(ax, "L2 norm of the token's state", title=title)
    return fig


def figure_maps(images: Tensor, ratios: Tensor, marked: Tensor, counts: Tensor, title: str) -> Figure:
    """Norm-over-median maps (B, g, g) with marked (B, g, g) tokens crossed, and flagged counts per position."""
    shown = len(images)
    fig = Figure(figsize=(2.2 * (shown + 1), 2.9), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(1, shown + 1, squeeze=False)[0]
    scale = images.shape[-1] / ratios.shape[-1]  # pixels per patch
    for column in range(shown):
        draw_overlay(axes[column], images[column], ratios[column], alpha=0.6,
                     title=f"loudest {ratios[column].max():.2f}x")
        rows, cols = marked[column].nonzero(as_tuple=True)
        axes[column].scatter((cols.float() + 0.5) * scale - 0.5, (rows.float() + 0.5) * scale - 0.5, marker="x",
                             color="cyan", s=40)
    image = axes[-1].imshow(counts.numpy(), cmap="viridis")
    axes[-1].set_title("flagged per grid position\n(all measured images)", fontsize=9)
    axes[-1].set_axis_off()
    fig.colorbar(image, ax=axes[-1], shrink=0.8)
    return fig


def print_table(norms: Tensor, attentions: list[Tensor], factor: float) -> None:
    """One line per block: norms, how loud the loudest patch is, outliers and the class token's attention on them."""
    ratios = loudness(norms)
    for block in range(len(norms)):
        count = int(high_norm_tokens(norms[block], factor).sum())
        line = (f"  block {block + 1:2d}: class token {norms[block, :, 0].mean():7.2f}, median patch "
                f"{norms[block, :, 1:].median(dim=1).values.mean():7.2f}, loudest patch {ratios[block].max():5.2f}x "
                f"its median, {count} outliers")
        if count and block < len(norms) - 1:
            share = outlier_attention(norms, attentions, block, factor)
            line += f"; next block's class token gives them {share.enrichment.mean():.1f}x their share (heads "
            line += ", ".join(f"{value:.1f}" for value in share.enrichment.tolist()) + ")"
        print(line)
    print()


def where_they_sit(subject: Subject, measured_masks: Tensor | None, flagged: Tensor) -> str:
    """A sentence on object vs background for flagged (B, patches) tokens, when the images have object masks."""
    if measured_masks is None or not flagged.any():
        return ""
    on_object = object_patches(measured_masks, geometry(subject.model))  # (B, patches)
    share = on_object[flagged].float().mean().item()
    return (f" {share:.0%} of them lie on the object (object patches are {on_object.float().mean():.0%} of all "
            f"patches); Darcet et al.'s sit on background.")


@run_lesson
def main(argv: Sequence[str] | None = None) -> int:
    args, subject = start(__file__, __doc__, argv, lambda p: p.add_argument(
        "--factor", type=number_flag("factor", FACTOR), default=DEFAULT_FACTOR, metavar="X",
        help=f"a patch is an outlier above X times its image's median patch norm (default {DEFAULT_FACTOR:g})"))
    geo = geometry(subject.model)
    measured = subject.examples.take(256 if subject.small else 8)
    with torch.no_grad():
        _, captured = capture_forward(subject.model, subject.inputs(measured.images))
    norms = check_against_vitlab(captured.hidden_states, args.factor)  # (blocks, B, tokens)
    outliers = torch.stack([high_norm_tokens(block, args.factor) for block in norms])  # (blocks, B, tokens)
    explain(f"""
        Model: {subject.name}, {len(measured)} test images, {geo.num_tokens} tokens each. A patch is an
        outlier when its norm exceeds {args.factor:g}x the median patch norm of its image in that block. Asserted:
        the lesson's norms_by_hand and outliers_by_hand equal vitlab.analysis.norms'. Per block (norms averaged over
        images; "share" compares the class token's attention in the next block on the outliers with their share
        of tokens, 1.0x being what uniform attention would give):
    """)
    print_table(norms, captured.attentions, args.factor)

    ratios = loudness(norms)  # (blocks, B, patches)
    block = int(ratios.amax(dim=(1, 2)).argmax())  # the block with the loudest patch
    flagged = outliers[block, :, 1:]  # (B, patches)
    if outliers.any():
        positions = outlier_positions(outliers[block], geo.grid_size)
        explain(f"""
            {int(outliers.sum())} outlier tokens in all blocks. In block {block + 1}, which has the loudest patch,
            {len(positions)} outliers in {len(positions[:, 0].unique())} of {len(measured)} images.
            {where_they_sit(subject, measured.masks, flagged)}
        """)
        marked_what = "outliers"
    else:
        flagged = ratios[block] >= ratios[block].amax(dim=1, keepdim=True)  # each image's loudest patch
        explain(f"""
            No outliers: in no block does any patch of any of the {len(measured)} images reach {args.factor:g}x its
            image's median norm. The loudest patch measured is {ratios[block].max():.2f}x, in block {block + 1}
            (Darcet et al.'s artifacts are near 10x). The figure marks each
            image's loudest patch in that block instead.{where_they_sit(subject, measured.masks, flagged)}
        """)
        marked_what = "each image's loudest patch"
    save(figure_norms(norms, args.factor, f"{subject.name}: token norms by block"), args.out, FIGURES[0])
    grid = (len(measured), geo.grid_size, geo.grid_size)
    counts = flagged.sum(dim=0).reshape(geo.grid_size, geo.grid_size)  # (g, g) over all measured images
    shown = subject.inputs(measured.images[:SHOWN])
    save(figure_maps(shown, ratios[block].reshape(grid)[:SHOWN], flagged.reshape(grid)[:SHOWN], counts,
                     f"{subject.name}: norm / median patch norm in block {block + 1}; x: {marked_what}"),
         args.out, FIGURES[1])
    print_questions(__doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
