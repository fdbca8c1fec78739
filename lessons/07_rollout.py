"""Lesson 7: attention rollout, because one block's map is not the whole story.

The class token's attention in the last block says which tokens it reads. But after a few blocks token i is no
longer patch i: every block mixed some of every token into every other, and the residual connection kept some of
each token's own past. Attention rollout (Abnar & Zuidema, 2020) follows the mixing back to the input: for each
block take the attention with the heads fused (mean, max or min), add the identity for the residual, renormalise
the rows, and multiply the blocks together. The lesson writes that out in ten lines (`rollout_by_hand`) and
asserts that vitlab's `rollout` equals it. Optionally discard each row's weakest weights first (`discard_ratio`,
vitlab's only) to keep only the strong paths.

The lesson draws the last block's map next to rollout with each fusion, and scores every map on the shapes,
whose object masks say where the object really is: the pointing game (is the map's maximum on the object?) and
the attention mass ratio (how concentrated on the object, 1.0 = chance), against a random map.

Builds on: vitlab/analysis/attention.py (`rollout`, `fuse_heads`, `cls_attention`, `pointing_game`,
`attention_mass_ratio`), vitlab/capture.py (`capture_forward`).

Run: python lessons/07_rollout.py [--discard RATIO] [--arch vit_b_16 | --checkpoint PATH] [--out DIR]
Figures: rollout_maps.png (images x maps), rollout_scores.png (pointing game and mass ratio of every map).

Questions:
1. Why add the identity before multiplying? What would rollout say about a model whose blocks mostly pass their
   input through the residual connection, if you left it out?
2. Which single block's class-token map scores best here, and is it the last one? What does that tell you about
   reading only the last block?
3. Mean, max and min fusion answer different questions about the heads. Which one would you use to ask "does any
   head look here?", and which for "do all heads agree?"
4. Rollout ignores the MLPs and the values: it only follows attention weights. Name one way this can make a
   rollout map wrong about what the model uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from matplotlib.figure import Figure
from torch import Tensor

from vitlab.analysis.attention import cls_attention, rollout
from vitlab.analysis.localization import attention_mass_ratio, object_patches, pointing_game, random_maps
from vitlab.capture import Geometry, capture_forward, geometry
from vitlab.cli import Rule, number_flag
from vitlab.plotting import draw_overlay
from vitlab.teaching.lesson import explain, print_questions, run_lesson, save, start

FIGURES = ("rollout_maps.png", "rollout_scores.png")
DISCARD = Rule(0, 0.99, "--discard 0.9", whole=False)  # rollout takes [0, 1): at 1 every weight would go


FUSIONS = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1), "min": lambda a: a.amin(dim=1)}


def rollout_by_hand(attentions: list[Tensor], fusion: str = "mean") -> Tensor:
    """Attention rollout, written out: one (B, heads, T, T) per block, first block first -> (B, patches)."""
    identity = torch.eye(attentions[0].shape[-1])  # (T, T): the residual connection passes each token on
    joint = identity  # before the first block, every token is only itself
    for attention in attentions:
        flow = (FUSIONS[fusion](attention) + identity) / 2  # (B, T, T): half attention, half residual
        flow = flow / flow.sum(dim=-1, keepdim=True)  # every row is a mix again: it sums to 1
        joint = flow @ joint  # follow the mixing one block further back towards the input
    return joint[:, 0, 1:]  # the class token's row, over the patch tokens


def all_maps(attentions: list[Tensor], geo: Geometry, discard: float) -> dict[str, Tensor]:
    """Every map the lesson compares, each (B, patches): single blocks' class-token rows and rollouts.

    Asserts that vitlab's `rollout` equals `rollout_by_hand` for every fusion.
    """
    maps = {f"block {b + 1} only": cls_attention(a, geo).mean(dim=1).flatten(1) for b, a in enumerate(attentions)}
    for fusion in FUSIONS:
        maps[f"rollout {fusion}"] = rollout_by_hand(attentions, fusion)
        torch.testing.assert_close(
            rollout(attentions, head_fusion=fusion), maps[f"rollout {fusion}"],
            msg=lambda why, fusion=fusion: f"vitlab's rollout ({fusion} fusion) differs from the lesson's "
                                           f"rollout_by_hand: {why}")
    maps[f"rollout max, discard {discard:.0%}"] = rollout(attentions, head_fusion="max", discard_ratio=discard)
    return maps


def figure_maps(images: Tensor, maps: dict[str, Tensor], geo: Geometry, title: str) -> Figure:
    """Rows of images; columns: the image, then each map over it."""
    rows, columns = images.shape[0], len(maps) + 1
    fig = Figure(figsize=(1.9 * columns, 2.1 * rows + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        draw_overlay(axes[row, 0], images[row], None, title="image")
        for column, (name, flat) in enumerate(maps.items(), start=1):
            grid_map = rearrange(flat[row], "(h w) -> h w", h=geo.grid_size)
            draw_overlay(axes[row, column], images[row], grid_map, title=name.replace(", ", ",\n"))
    return fig


def figure_scores(scores: dict[str, tuple[float, float]], random: tuple[float, float], title: str) -> Figure:
    """Horizontal bars: pointing game and mass ratio of every map, with the random map as a line."""
    names = list(scores)
    fig = Figure(figsize=(10, 0.45 * len(names) + 1.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(1, 2, sharey=True)
    labels = ("pointing game (share of images)", "attention mass ratio (1.0 = chance)")
    for index, (ax, label) in enumerate(zip(axes, labels, strict=True)):
        values = [scores[name][index] for name in names]
        colours = ["tab:orange" if name.startswith("rollout") else "tab:blue" for name in names]
        ax.barh(names, values, color=colours)
        ax.axvline(random[index], color="grey", linestyle="--", label="random map")
        ax.set(xlabel=label)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].invert_yaxis()  # first block at the top
    return fig


@run_lesson
def main(argv: Sequence[str] | None = None) -> int:
    args, subject = start(__file__, __doc__, argv, lambda p: p.add_argument(
        "--discard", type=number_flag("discard", DISCARD), default=0.9, metavar="RATIO",
        help="share of each row's weakest attention weights to drop, for the last rollout (default: 0.9)"))
    model, geo = subject.model, geometry(subject.model)

    shown = subject.pick(4)
    inputs = subject.inputs(shown.images)
    with torch.no_grad():
        _, captured = capture_forward(model, inputs)
    maps_figure = figure_maps(inputs, all_maps(captured.attentions, geo, args.discard), geo,
                              f"{subject.name}: one block's class-token attention vs rollout (heads averaged in "
                              f"single blocks; each map scaled to its own maximum)")
    explain("Asserted: the lesson's rollout_by_hand (ten lines) equals vitlab's rollout for mean, max and "
            "min fusion.")

    measured = subject.examples.take(500 if subject.small else 16)
    if measured.masks is None:
        save(maps_figure, args.out, FIGURES[0])
        print("  (no rollout_scores.png: these images have no object masks to score against; the shapes do)\n")
        print_questions(__doc__)
        return 0
    with torch.no_grad():
        _, captured = capture_forward(model, subject.inputs(measured.images))
    maps = all_maps(captured.attentions, geo, args.discard)
    objects = object_patches(measured.masks, geo)  # (B, patches)
    baseline = random_maps(objects.shape)  # (B, patches), seeded: the same on every run
    random = (pointing_game(baseline, objects), attention_mass_ratio(baseline, objects))
    scores = {name: (pointing_game(m, objects), attention_mass_ratio(m, objects)) for name, m in maps.items()}

    explain(f"""
        Model: {subject.name}. Scored on {len(objects)} test images whose objects cover on average
        {100 * objects.float().mean():.0f}% of the patches. Pointing game: share of images whose map maximum is
        on the object. Mass ratio: share of the map on the object divided by the object's share of patches.
    """)
    width = max(len(name) for name in scores)
    print("\n".join(f"  {name:<{width}}  pointing game {pg:5.2f}   mass ratio {mr:5.2f}"
                    for name, (pg, mr) in [*scores.items(), ("random map", random)]) + "\n")
    best = max(scores, key=lambda name: scores[name][1])
    last_block = f"block {len(captured.attentions)} only"
    explain(f"""
        Best mass ratio: {best} ({scores[best][1]:.2f}). The last block alone:
        {scores[last_block][1]:.2f}; rollout with mean fusion: {scores["rollout mean"][1]:.2f}.
    """)
    save(maps_figure, args.out, FIGURES[0])
    save(figure_scores(scores, random, f"{subject.name}: does the map land on the object? "
                                       f"({len(objects)} test images)"), args.out, FIGURES[1])
    print_questions(__doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
