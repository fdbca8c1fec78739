"""Known-answer tests for vitlab.analysis.probes: a probe reads a planted label perfectly and noise at chance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer

from vitlab.analysis.probes import features_by_depth, fit_probe, probe_accuracy, probes_by_depth
from vitlab.capture import capture_forward
from vitlab.data import BatchTransform
from vitlab.errors import VitlabError
from vitlab.model import build_model

pytestmark = pytest.mark.usefixtures("single_thread")


def planted(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, dim) whose first `classes` columns are the label as a one-hot, the rest noise; the labels (n,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    features = torch.randn(n, dim, generator=generator)
    features[:, :classes] = F.one_hot(labels, classes).float()
    return features, labels


def test_a_probe_reads_a_planted_one_hot_label_perfectly_on_held_out_data():
    train_x, train_y = planted(400, 5, 32, seed=0)
    test_x, test_y = planted(400, 5, 32, seed=1)

    probe = fit_probe(train_x, train_y, num_classes=5)

    assert probe_accuracy(probe, test_x, test_y) == 1.0


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_a_probe_fits_the_same_inside_no_grad_and_inference_mode(context):
    train_x, train_y = planted(200, 3, 8, seed=0)
    expected = fit_probe(train_x, train_y, num_classes=3)
    with context():
        inside_x, inside_y = planted(200, 3, 8, seed=0)  # made inside the context, as a lesson's features are
        probe = fit_probe(inside_x, inside_y, num_classes=3)
    torch.testing.assert_close(probe.weight, expected.weight)
    torch.testing.assert_close(probe.bias, expected.bias)


def test_a_probe_on_random_features_with_random_labels_scores_chance():
    generator = torch.Generator().manual_seed(0)
    classes, n_test = 4, 4000
    train_x, train_y = torch.randn(300, 16, generator=generator), torch.randint(0, classes, (300,), generator=generator)
    test_x, test_y = torch.randn(n_test, 16, generator=generator), torch.randint(0, classes, (n_test,),
                                                                                 generator=generator)

    accuracy = probe_accuracy(fit_probe(train_x, train_y, classes), test_x, test_y)

    # Held-out accuracy of any fixed rule on independent labels is Binomial(n, 1/4) / n: 4.5 standard deviations.
    tolerance = 4.5 * math.sqrt(0.25 * 0.75 / n_test)
    assert abs(accuracy - 0.25) < tolerance


def test_the_probe_converges_to_the_optimum_of_its_loss():
    x, y = planted(200, 3, 8, seed=2)
    x[:, :3] += torch.randn(200, 3, generator=torch.Generator().manual_seed(7))  # overlapping classes

    probe = fit_probe(x, y, 3)

    weight = probe.weight.double().requires_grad_(True)
    bias = probe.bias.double().requires_grad_(True)
    standardised = (x.double() - probe.mean.double()) / probe.std.double()
    loss = F.cross_entropy(standardised @ weight.T + bias, y) + 0.5 * 1e-3 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4  # zero gradient: the minimum
    assert weight.abs().max() > 0.1  # and not the zero start


def test_features_are_standardised_with_training_statistics_only():
    x, y = planted(300, 3, 6, seed=3)
    scale, shift = torch.tensor([1000.0, 0.01, 5, 1, 1, 1]), torch.tensor([50.0, -3, 0, 0, 0, 7])
    test_x, _ = planted(100, 3, 6, seed=4)

    probe = fit_probe(x, y, 3)
    rescaled = fit_probe(x * scale + shift, y, 3)

    torch.testing.assert_close(probe.mean, x.mean(dim=0))
    torch.testing.assert_close(probe.std, x.std(dim=0, correction=0))
    assert torch.equal(probe.predict(test_x), rescaled.predict(test_x * scale + shift))  # units do not matter


def test_fitting_is_deterministic():
    x, y = planted(150, 4, 10, seed=5)

    first, second = fit_probe(x, y, 4), fit_probe(x, y, 4)

    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)


@pytest.fixture(scope="module")
def demo_inputs(demo_model):
    model, splits = demo_model
    transform = BatchTransform(model.image_size, train=False)
    train, test = splits.train.take(384), splits.test.take(256)
    return model, transform(train.images), train.labels, transform(test.images), test.labels


def test_features_by_depth_are_the_captured_class_token_and_mean_patch(demo_inputs):
    model, images = demo_inputs[0], demo_inputs[1][:10]

    features = features_by_depth(model, images, batch_size=4)  # 3 batches: 4, 4, 2

    with torch.no_grad():
        _, captured = capture_forward(model, images)
    assert features.cls.shape == (4, 10, 64)
    for block, state in enumerate(captured.hidden_states):
        torch.testing.assert_close(features.cls[block], state[:, 0])
        torch.testing.assert_close(features.mean_patch[block], state[:, 1:].mean(dim=1))
    cls, mean_patch = features.block(3)
    assert torch.equal(cls, features.cls[3]) and torch.equal(mean_patch, features.mean_patch[3])


@pytest.mark.slow
def test_probes_on_the_demo_model_read_the_class_from_its_last_block(demo_inputs):
    model, train_images, train_labels, test_images, test_labels = demo_inputs

    results = probes_by_depth(model, train_images, train_labels, test_images, test_labels)

    assert results.cls.shape == results.mean_patch.shape == (4,)
    assert results.chance == torch.bincount(test_labels).max().item() / len(test_labels)
    assert results.cls[-1] > 0.8  # the head, itself linear, classifies the test photos at about 88%
    assert (results.cls >= results.chance - 0.1).all()
    assert not model.training  # the model's mode is left as it was


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_tiny", "vit_b_16"])
def test_features_by_depth_works_for_random_vit_tiny_and_vit_b_16(arch: str):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3, pretrained=False).train()
    images = torch.randn(2, 3, model.image_size, model.image_size)

    features = features_by_depth(model, images)

    model.eval()
    with torch.no_grad():
        _, captured = capture_forward(model, images)
    blocks, hidden = len(model.encoder.layers), model.hidden_dim
    assert features.cls.shape == features.mean_patch.shape == (blocks, 2, hidden)
    torch.testing.assert_close(features.cls[-1], captured.hidden_states[-1][:, 0])
    torch.testing.assert_close(features.mean_patch[0], captured.hidden_states[0][:, 1:].mean(dim=1))


def test_bad_input_gives_a_clear_vitlab_error(demo_inputs):
    model, images = demo_inputs[0], demo_inputs[1][:4]
    x, y = planted(20, 3, 5, seed=6)

    with pytest.raises(VitlabError, match="VisionTransformer models, got Linear"):
        features_by_depth(nn.Linear(3, 3), images)
    with pytest.raises(VitlabError, match="N >= 1"):
        features_by_depth(model, images[:0])
    with pytest.raises(VitlabError, match="choose 0 to 3"):
        features_by_depth(model, images).block(4)
    with pytest.raises(VitlabError, match="choose 0 to 3"):
        features_by_depth(model, images).block(-1)
    with pytest.raises(VitlabError, match=r"labels must be \(N,\) = \(20,\)"):
        fit_probe(x, y[:10], 3)
    with pytest.raises(VitlabError, match="0 to num_classes - 1"):
        fit_probe(x, y, 2)
    with pytest.raises(VitlabError, match="N >= 1"):
        fit_probe(x[:0], y[:0], 3)
    with pytest.raises(VitlabError, match="test set needs N >= 1 images"):
        probes_by_depth(model, images, y[:4], images[:0], y[:0])
    assert isinstance(model, VisionTransformer)
