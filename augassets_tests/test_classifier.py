from dataclasses import replace

import numpy as np
import pytest
import torch

from augassets.core.classifier import (
    LabeledImages,
    LrPlateau,
    SmallResNet,
    build_model,
    per_class_accuracy,
    train_classifier,
)
from augassets.profiles import SMALL_RESNET

from .conftest import write_image

COLORS = [(230, 30, 30), (30, 30, 230), (30, 200, 30)]


def colour_set(root, per_class: int) -> LabeledImages:
    paths, labels = [], []
    for label, color in enumerate(COLORS):
        for i in range(per_class):
            paths.append(str(write_image(root / f"{label}_{i}.png", color=color, size=28)))
            labels.append(label)
    return LabeledImages(paths, labels)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return colour_set(root / "train", 16), colour_set(root / "val", 6), colour_set(root / "test", 6)


def test_classifier_learns_and_follows_the_protocol(colour_data):
    """Colour classes are learnable in a few epochs; after that val stops improving, so the lr is
    divided by 10 after `plateau_patience` stagnant epochs and training stops after `early_stop_patience`."""
    train, val, test = colour_data
    spec = replace(
        SMALL_RESNET, width=4, batch_size=16, lr=0.05, max_epochs=60, plateau_patience=1, early_stop_patience=4
    )
    result = train_classifier(train, val, test, num_classes=3, spec=spec, seed=0)
    assert result.best_val_top1 == 1.0
    assert result.test_top1 >= 0.9
    assert result.epochs_run == result.best_epoch + spec.early_stop_patience < spec.max_epochs
    assert result.stopped_early
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(0.05)
    assert pytest.approx(0.005) in lrs, "the lr is divided by 10 on a val plateau"
    assert set(result.per_class_test_top1) == {0, 1, 2}
    assert result.train_images == len(train) and result.images_per_second > 0
    # The returned checkpoint is the best-val one and loads into a fresh model.
    model = SmallResNet(3, width=4)
    model.load_state_dict(result.state_dict)


def test_weight_averaging_keeps_the_moving_average_of_the_steps(colour_data, monkeypatch):
    """With ``ema_decay`` the checkpoint that is validated, kept and tested is the exponential moving
    average of the weights after each SGD step (the first step's weights, then decay·avg + (1−decay)·w)."""
    train, val, test = colour_data
    spec = replace(
        SMALL_RESNET,
        width=4,
        batch_size=16,
        max_epochs=1,
        min_steps_per_epoch=3,
        plateau_patience=1,
        early_stop_patience=4,
        ema_decay=0.6,
    )
    steps = []
    plain_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        result = plain_step(self, *args, **kwargs)
        steps.append([p.detach().clone() for group in self.param_groups for p in group["params"]])
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    result = train_classifier(train, val, test, 3, spec, seed=0)
    assert len(steps) == 3
    expected = steps[0]
    for weights in steps[1:]:
        expected = [0.6 * e + 0.4 * w for e, w in zip(expected, weights)]
    names = [name for name, _ in SmallResNet(3, width=4).named_parameters()]
    for name, value in zip(names, expected):
        assert torch.allclose(result.state_dict[name], value, atol=1e-6), name
    assert not torch.allclose(result.state_dict["fc.weight"], steps[-1][names.index("fc.weight")]), (
        "the average is not the last iterate"
    )
    monkeypatch.undo()
    longer = train_classifier(
        train, val, test, 3, replace(spec, max_epochs=60, min_steps_per_epoch=10, ema_decay=0.9), seed=0
    )
    assert longer.best_val_top1 == 1.0 and longer.test_top1 >= 0.9


def test_lr_drops_after_exactly_patience_epochs_without_improvement():
    """Paper §3: lr ÷ 10 *after* 10 epochs without improvement, i.e. on the 10th stagnant epoch (torch's
    ReduceLROnPlateau(patience=10) would drop on the 11th); the count restarts after a drop and after a gain."""
    plateau = LrPlateau(10)
    assert plateau.step(improved=True) is False
    drops = [plateau.step(improved=False) for _ in range(25)]
    assert [i + 1 for i, drop in enumerate(drops) if drop] == [10, 20]
    assert [plateau.step(improved=False) for _ in range(4)] + [plateau.step(improved=True)] == [False] * 5
    assert [i + 1 for i, drop in enumerate(plateau.step(improved=False) for _ in range(10)) if drop] == [10]


def test_training_is_seeded(colour_data):
    train, val, test = colour_data
    spec = replace(SMALL_RESNET, width=4, batch_size=16, max_epochs=2, plateau_patience=1, early_stop_patience=2)
    a = train_classifier(train, val, test, 3, spec, seed=3)
    b = train_classifier(train, val, test, 3, spec, seed=3)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_empty_split_is_rejected(colour_data):
    train, val, _ = colour_data
    with pytest.raises(ValueError, match="empty split"):
        train_classifier(train, val, LabeledImages([], []), 3, SMALL_RESNET, seed=0)


def test_models_have_the_right_output_shape():
    assert SmallResNet(7, width=4)(torch.zeros(2, 3, 28, 28)).shape == (2, 7)
    resnet50 = build_model(replace(SMALL_RESNET, arch="resnet50"), 5)
    assert resnet50.fc.out_features == 5
    with pytest.raises(ValueError, match="classifier.arch"):
        build_model(replace(SMALL_RESNET, arch="vgg"), 5)


def test_per_class_accuracy():
    predictions = np.array([0, 0, 1, 2, 2, 2])
    targets = np.array([0, 1, 1, 2, 2, 0])
    assert per_class_accuracy(predictions, targets) == {0: 0.5, 1: 0.5, 2: 1.0}


def test_batched_evaluation_and_normalization_equal_the_per_image_transforms(colour_data):
    """Evaluation sets are transformed once as batches and training batches are normalized after
    collation; both must give exactly the tensors torchvision's per-image transforms give."""
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    from augassets.core.classifier import MEAN, STD, ImageListDataset, _loader, eval_transform, normalize_batch

    spec = replace(SMALL_RESNET, batch_size=5)
    _, val, _ = colour_data
    per_image = DataLoader(
        ImageListDataset(val.paths, val.labels, eval_transform(spec), preload_size=spec.image_size), batch_size=5
    )
    batched = list(_loader(val, None, spec, shuffle=False, seed=0))
    assert len(batched) == len(per_image)
    for (a, la), (b, lb) in zip(per_image, batched):
        assert torch.equal(a, b) and torch.equal(la, lb)

    images = torch.randint(0, 256, (7, 3, 28, 28), dtype=torch.uint8)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    assert torch.equal(normalize_batch(images), torch.stack([reference(image) for image in images]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_cuda_profile_without_a_gpu_stops_with_the_setting_to_change(monkeypatch):
    """The ResNet-50 profiles ask for cuda: without a GPU their steps stop, naming the override,
    instead of training on the CPU unnoticed."""
    import dagster as dg

    from augassets.profiles import get_profile
    from augassets.resources import DEVICE_ENV, default_resources

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    compute = default_resources(get_profile("imagenet10"))["compute"]
    assert compute.device == "cuda"
    with pytest.raises(RuntimeError, match="no CUDA device is visible; set AUGASSETS_DEVICE=cpu"):
        compute.setup_for_execution(dg.build_init_resource_context())
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert default_resources(get_profile("imagenet10"))["compute"].device == "cpu"
