# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 13: linear probes, what each block knows, beside what the logit lens reads
#
# Lesson 12's logit lens reads every block's class token through the model's own final norm and head: it asks
# "what would the model answer if it stopped here?". That can mislead: the head was trained on the last block's
# output, and an earlier block may hold the answer in directions the head never looks along. A linear probe (Alain
# & Bengio 2016) asks a fairer question: train a new linear classifier on each block's frozen tokens (held-out
# images score it) and see how much of the label a straight line can read off. The lesson probes the class token
# and, separately, the mean of the patch tokens, and draws both beside the lens, block by block, in one figure.
#
# Builds on: `vitlab/analysis/probes.py` (`features_by_depth`, `fit_probe`, `probe_accuracy`, `ProbeConfig`),
# `vitlab/analysis/lens.py` (`logit_lens_forward`), `vitlab/plotting.py` (`style_depth_axes`).
#
# Figure, in `lesson_outputs/13_linear_probes/`: `probe_vs_lens.png` (per block: held-out accuracy of the
# class-token and mean-patch probes, the logit lens's accuracy and its agreement with the final prediction, and
# chance).

# %%
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vitlab.analysis.lens import logit_lens_forward
from vitlab.analysis.probes import Probe, ProbeConfig, features_by_depth, fit_probe, probe_accuracy
from vitlab.plotting import style_depth_axes
from vitlab.teaching.lesson import assert_same, explain, save, start, study

FIGURES = ("probe_vs_lens.png",)
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/13_linear_probes.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a notebook,
# put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--arch", "vit_b_16"]`) and run the cells
# again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
settings = start("13_linear_probes", FLAGS)
subject = study(settings)

# %% [markdown]
# ## The probe, written out
#
# Standardise each feature with the TRAINING images' mean and standard deviation, logits = x W^T + b, minimise the
# mean cross-entropy + weight_decay / 2 |W|^2 (full-batch L-BFGS from zero; the objective is convex, so there is
# one answer). Accuracy = share of held-out images whose largest logit is the true class.


# %%
def probe_objective(weight: Tensor, bias: Tensor, features: Tensor, labels: Tensor, weight_decay: float) -> Tensor:
    """The probe's loss: training-standardised features, mean cross-entropy + L2 on the weights."""
    x = (features - features.mean(dim=0)) / features.std(dim=0, correction=0)  # (N, D) the training statistics
    logits = x @ weight.T + bias  # (N, classes)
    log_probabilities = logits - logits.logsumexp(dim=1, keepdim=True)  # log-softmax
    cross_entropy = -log_probabilities.gather(1, labels[:, None]).mean()
    return cross_entropy + 0.5 * weight_decay * weight.pow(2).sum()


# %% [markdown]
# vitlab's `fit_probe` must sit at the minimum of that objective: the objective's slope at vitlab's weights must be
# zero. And vitlab's `probe_accuracy` must be the lesson's count of right answers. Both are checked for every
# probe, one per block and kind of token.


# %%
def check_probe(probe: Probe, features: Tensor, labels: Tensor, test: Tensor, test_labels: Tensor,
                config: ProbeConfig) -> float:
    """Assert: vitlab's probe sits at the minimum of probe_objective, and its accuracy is the lesson's. -> accuracy"""
    weight = probe.weight.double().requires_grad_(True)
    bias = probe.bias.double().requires_grad_(True)
    with torch.enable_grad():
        probe_objective(weight, bias, features.double(), labels, config.weight_decay).backward()
    slope = torch.cat([weight.grad.flatten(), bias.grad])
    assert_same(slope, torch.zeros_like(slope), vitlab="vitlab's fit_probe (the slope of probe_objective at its "
                "weights)", lesson="probe_objective's minimum (slope 0)", rtol=0.0, atol=1e-3)
    standardised = (test - features.mean(dim=0)) / features.std(dim=0, correction=0)  # training statistics
    by_hand = ((standardised @ probe.weight.T + probe.bias).argmax(dim=1) == test_labels).double().mean().item()
    assert_same(probe_accuracy(probe, test, test_labels), by_hand, vitlab="vitlab's probe_accuracy",
                lesson="accuracy of the probe's largest logit", rtol=0.0, atol=1e-9)
    return by_hand


def probe_all_blocks(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, classes: int,
                     config: ProbeConfig) -> Tensor:
    """(blocks, N, D) features of both sets -> (blocks,) held-out accuracy; every probe checked against the lesson."""
    accuracies = []
    for block in range(len(train)):
        probe = fit_probe(train[block], train_labels, classes, config)
        accuracies.append(check_probe(probe, train[block], train_labels, test[block], test_labels, config))
    return torch.tensor(accuracies)


config = ProbeConfig()
train_set = subject.splits.train.take(2000 if subject.small else 64)
test_set = subject.examples.take(1000 if subject.small else 32)
train_inputs, test_inputs = subject.inputs(train_set.images), subject.inputs(test_set.images)
classes = subject.splits.num_classes  # the dataset's labels: a probe needs no head
train, test = features_by_depth(subject.model, train_inputs), features_by_depth(subject.model, test_inputs)
curves = {
    "probe: class token": probe_all_blocks(train.cls, train_set.labels, test.cls, test_set.labels, classes, config),
    "probe: mean patch token": probe_all_blocks(train.mean_patch, train_set.labels, test.mean_patch, test_set.labels,
                                                classes, config),
}

# %% [markdown]
# ## Beside the lens
#
# The lens reads the model's own classes; where those are the dataset's labels it has an accuracy too.

# %%
lens = logit_lens_forward(subject.model, test_inputs)
if subject.labels_match:
    curves["lens: accuracy"] = (lens.lens_logits.argmax(dim=-1) == test_set.labels).double().mean(dim=1)
curves["lens: agrees with the final prediction"] = lens.agreement.double()
chance = torch.bincount(test_set.labels, minlength=classes).max().item() / len(test_set)
explain(f"""
    Model: {subject.name}. One probe per block and token kind, trained on {len(train_set)} training images,
    scored on {len(test_set)} held-out test images ({classes} classes; always guessing the most common class
    scores {chance:.0%}). Asserted for every probe: vitlab's fit_probe minimises the lesson's written-out
    objective, and its accuracy is the lesson's.{'' if subject.labels_match else ' The lens reads this '
    "model's own classes, not the dataset's, so only its agreement with the final prediction is shown."}
""")
print("\n".join(f"  block {block + 1:2d}: " + ", ".join(f"{name} {values[block]:.1%}" for name, values in
                                                   curves.items()) for block in range(len(lens.agreement))) + "\n")
gap = curves["probe: class token"] - curves.get("lens: accuracy", lens.agreement.double())
widest = int(gap.argmax())
lens_word = "scores" if subject.labels_match else "agrees with the final prediction on"
verdict = ("A straight line can read the class off that block's output; the model's own head, trained on the last "
           "block, cannot." if gap[widest] > 0.1 else "Nowhere does the probe lead the lens by more than 10 points "
           "here.")
explain(f"""
    The widest gap: block {widest + 1}, where the class-token probe reads
    {curves['probe: class token'][widest]:.0%} of the held-out images right and the lens {lens_word}
    {(curves['probe: class token'] - gap)[widest]:.0%}. {verdict}
""")


# %%
def figure_probe_vs_lens(curves: dict[str, Tensor], chance: float, title: str) -> Figure:
    """One line per measure, by block; chance as a dashed line."""
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    styles = {"probe": "o-", "lens": "s--"}
    for name, values in curves.items():
        ax.plot(torch.arange(1, len(values) + 1).numpy(), values.numpy(), styles[name.split(":")[0]], label=name)
    ax.axhline(chance, color="grey", linestyle=":", label=f"chance (most common class) {chance:.0%}")
    style_depth_axes(ax, "share of held-out images", title=title, ylim=(0, 1.05))
    return fig


save(figure_probe_vs_lens(curves, chance, f"{subject.name}: linear probes vs the logit lens"), settings.out,
     FIGURES[0])

# %% [markdown]
# ## Questions
#
# 1. In which blocks does the probe read the class far better than the lens? What does the head "not looking along
#    the right directions" mean, concretely, for a block whose output the head was never trained on?
# 2. The probe is trained on labels, the lens never is. Which of the two could find information that the model
#    itself does not use? Is a high probe accuracy proof that the model uses that information?
# 3. The mean patch token has no special role in a torchvision ViT: only the class token reaches the head. Why
#    can it still be probed, and why might it lead or lag the class token in early blocks?
# 4. Block 1 has seen no label at all (it is the shipped base's, frozen), yet a straight line reads the kind of
#    garment off it far better than chance. What in a 4-px patch of a photo, or in a few neighbouring patches, could
#    already say "trouser" or "bag"?
