"""The downstream classifier and the paper's training protocol (section 3).

RandomResizedCrop + horizontal flip, SGD with momentum, the learning rate divided by 10 after
``plateau_patience`` epochs without a better val accuracy, training stopped after
``early_stop_patience`` such epochs or ``max_epochs``, and the best-val checkpoint scored on test.
A plain loop in the spirit of torchvision's classification reference.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.models import resnet50
from torchvision.models.resnet import BasicBlock
from torchvision.transforms import v2

from ..profiles import ClassifierSpec
from .images import load_rgb

MEAN = (0.485, 0.456, 0.406)  # ImageNet channel statistics, as torchvision's reference uses
STD = (0.229, 0.224, 0.225)

log = logging.getLogger(__name__)


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2) for 28–32 px images: a 3×3 stem and three
    stages of torchvision ``BasicBlock``s at widths w, 2w, 4w, downsampling by stride 2."""

    def __init__(self, num_classes: int, width: int = 16, blocks_per_stage: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages, in_ch = [], width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            for b in range(blocks_per_stage):
                s = stride if b == 0 else 1
                downsample = None
                if s != 1 or in_ch != out_ch:
                    downsample = nn.Sequential(
                        nn.Conv2d(in_ch, out_ch, 1, stride=s, bias=False), nn.BatchNorm2d(out_ch)
                    )
                stages.append(BasicBlock(in_ch, out_ch, stride=s, downsample=downsample))
                in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_model(spec: ClassifierSpec, num_classes: int) -> nn.Module:
    if spec.arch == "resnet_small":
        return SmallResNet(num_classes, width=spec.width)
    if spec.arch == "resnet50":
        return resnet50(weights=None, num_classes=num_classes)
    raise ValueError(
        f"unknown classifier arch {spec.arch!r} (profile setting classifier.arch: resnet_small or resnet50)"
    )


def train_transform(spec: ClassifierSpec) -> v2.Transform:
    """The random part, per image on uint8; ``normalize_batch`` finishes a collated batch."""
    return v2.Compose(
        [v2.RandomResizedCrop(spec.image_size, scale=spec.crop_scale, antialias=True), v2.RandomHorizontalFlip()]
    )


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 → float in [0, 1] → ImageNet-normalized, on a whole batch (on the training device):
    element for element what ``v2.ToDtype(scale=True)`` and ``v2.Normalize`` compute per image."""
    return v2.functional.normalize(v2.functional.to_dtype(images, torch.float32, scale=True), MEAN, STD)


def eval_transform(spec: ClassifierSpec) -> v2.Transform:
    # At 224 px, torchvision's reference resizes to 256 and centre-crops; small images are just resized.
    resize = int(round(spec.image_size * 256 / 224)) if spec.image_size >= 64 else spec.image_size
    return v2.Compose(
        [
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(spec.image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


def _to_uint8_tensor(path: str, size: int | None) -> torch.Tensor:
    image = load_rgb(path)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


class ImageListDataset(Dataset):
    """(path, label) pairs. Small sets are decoded once into a uint8 tensor (``preload``); large ones
    are decoded on access, so an ImageNet-sized list is streamed rather than held in memory.

    ``deterministic``: the transform draws no random numbers (evaluation), so a preloaded set is
    transformed once, not once per epoch; the tensors are the same either way."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: v2.Transform,
        preload_size: int | None = None,
        deterministic: bool = False,
    ):
        self.paths = list(paths)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.transform = transform
        self.cache = None
        if preload_size is not None and self.paths:
            self.cache = torch.stack([_to_uint8_tensor(p, preload_size) for p in self.paths])
            if deterministic:  # the same kernels on a batch: element for element the per-image result
                self.cache = torch.cat([transform(chunk) for chunk in self.cache.split(1024)])
                self.transform = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = self.cache[index] if self.cache is not None else _to_uint8_tensor(self.paths[index], None)
        return (self.transform(image) if self.transform else image), self.labels[index]


@dataclass
class LabeledImages:
    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


class LrPlateau:
    """The paper's rule: divide the lr by 10 after ``patience`` epochs without a better val accuracy,
    counting again from zero after each drop. (torch's ``ReduceLROnPlateau`` drops one epoch later, on
    the ``patience + 1``-th, and calls a gain below 1e-4 relative no gain.)"""

    def __init__(self, patience: int):
        self.patience, self.stale = patience, 0

    def step(self, improved: bool) -> bool:
        """Record one epoch; True when the lr must drop now."""
        self.stale = 0 if improved else self.stale + 1
        if self.stale == self.patience:
            self.stale = 0
            return True
        return False


@dataclass
class TrainResult:
    test_top1: float
    best_val_top1: float
    best_epoch: int
    epochs_run: int
    train_images: int
    train_seconds: float
    images_per_second: float
    per_class_test_top1: dict[int, float]
    stopped_early: bool = False  # False: training ran into max_epochs
    history: list[dict] = field(default_factory=list)
    state_dict: dict | None = None


@functools.lru_cache(maxsize=2)
def _preloaded_eval_dataset(
    paths: tuple[str, ...], labels: tuple[int, ...], spec: ClassifierSpec, versions: tuple[int, ...]
) -> ImageListDataset:
    """The val and test sets, decoded and transformed once per process: the replicates and methods a
    step trains in turn all evaluate on the same two. ``versions`` (the files' mtimes) keys out a set
    whose files were rewritten."""
    return ImageListDataset(paths, labels, eval_transform(spec), preload_size=spec.image_size, deterministic=True)


class _Batches:
    """In-order batches of a preloaded, already transformed set: what a DataLoader without shuffling
    would yield, without its per-item calls."""

    def __init__(self, dataset: ImageListDataset, batch_size: int):
        self.dataset, self.batch_size = dataset, batch_size

    def __iter__(self):
        for start in range(0, len(self.dataset), self.batch_size):
            yield (
                self.dataset.cache[start : start + self.batch_size],
                self.dataset.labels[start : start + self.batch_size],
            )


def _loader(data: LabeledImages, transform, spec: ClassifierSpec, shuffle: bool, seed: int) -> DataLoader | _Batches:
    if transform is None and len(data) <= spec.preload_max_images:  # evaluation on a preloaded set
        versions = tuple(os.stat(p).st_mtime_ns for p in data.paths)
        return _Batches(_preloaded_eval_dataset(tuple(data.paths), tuple(data.labels), spec, versions), spec.batch_size)
    if transform is None:
        dataset = ImageListDataset(data.paths, data.labels, eval_transform(spec))
    else:
        preload = spec.image_size if len(data) <= spec.preload_max_images else None
        dataset = ImageListDataset(data.paths, data.labels, transform, preload_size=preload)
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if shuffle:
        # Small sets pass over their images several times per epoch (each pass a fresh permutation),
        # so that an epoch — and with it the plateau and early-stopping patience — is at least
        # ``min_steps_per_epoch`` SGD steps whatever the set's size.
        samples = max(len(dataset), spec.min_steps_per_epoch * spec.batch_size)
        sampler = RandomSampler(dataset, num_samples=samples, generator=generator)
    return DataLoader(
        dataset,
        batch_size=spec.batch_size,
        sampler=sampler,
        num_workers=spec.num_workers,
        drop_last=False,
        persistent_workers=spec.num_workers > 0,
        worker_init_fn=_seed_worker,
    )


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers draw their random crops from a seed derived from the loader's (torch's
    recipe for reproducible workers): the same run with the same ``num_workers`` gives the same
    batches. Another worker count draws the crops from other streams (in the main process they come
    from the main generator), so ``ClassifierSpec.num_workers`` is part of what a run computes, as
    the classifier's code version (which covers the whole spec) says."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    predictions, targets = [], []
    for images, labels in loader:
        predictions.append(model(images.to(device)).argmax(1).cpu())
        targets.append(labels)
    return torch.cat(predictions).numpy(), torch.cat(targets).numpy()


def per_class_accuracy(predictions: np.ndarray, targets: np.ndarray) -> dict[int, float]:
    return {int(c): float((predictions[targets == c] == c).mean()) for c in np.unique(targets)}


def kernel_fingerprint(spec: ClassifierSpec, threads: int, steps: int = 5) -> str:
    """A short hash of what this machine's kernels compute when they train ``spec``: a few SGD steps
    (crops, forward, backward, momentum and weight decay) on fixed synthetic images, then a forward
    pass in eval mode, all seeded. Another fingerprint means other roundings in training, so other
    numbers from the same seeds; the same fingerprint is what two machines need to repeat each
    other's tables (docs/running.md, "Reproducible numbers"). Run on the CPU with ``threads`` threads
    (the count the profile's classifier steps use); the caller's thread count and torch's random
    state are restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            return _fingerprint(spec, steps)
    finally:
        torch.set_num_threads(previous)


def training_machine(spec: ClassifierSpec, threads: int) -> dict:
    """Where ``spec``'s classifiers train: the CPU (``determinism.cpu_description``), the fingerprint
    of its training kernels at ``threads`` threads, and that thread count — what the results print and
    each classifier step records. Empty when ``spec.device`` is a GPU, whose kernels the fingerprint
    does not cover."""
    if spec.device != "cpu":
        return {}
    from .determinism import cpu_description

    return {
        "machine": cpu_description(),
        "training_kernel_fingerprint": kernel_fingerprint(spec, threads),
        "threads": threads,
    }


def _fingerprint(spec: ClassifierSpec, steps: int) -> str:
    """``kernel_fingerprint``'s computation, on the threads and random state it set up."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(spec, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    batch = min(spec.batch_size, 32)
    size = spec.image_size + spec.image_size // 4  # larger than the crop, as the stored images are
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    crop = train_transform(spec)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(normalize_batch(torch.stack([crop(image) for image in images]))), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(normalize_batch(v2.functional.resize(images, [spec.image_size] * 2, antialias=True)))
    digest = hashlib.sha256(logits.numpy().tobytes())
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def train_classifier(
    train: LabeledImages,
    val: LabeledImages,
    test: LabeledImages | None,
    num_classes: int,
    spec: ClassifierSpec,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train one classifier with the paper's protocol and score its best-val checkpoint on test.
    ``test=None``: no test scoring (``test_top1`` is NaN) — a model-selection run that may look at val only."""
    if not len(train) or not len(val) or (test is not None and not len(test)):
        raise ValueError(f"empty split: train={len(train)} val={len(val)} test={0 if test is None else len(test)}")
    say = progress or log.info
    torch.manual_seed(seed)
    np.random.seed(seed)
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"classifier device {spec.device!r} but no CUDA device is visible (set AUGASSETS_DEVICE=cpu to "
            f"train on the CPU)"
        )
    device = torch.device(spec.device)
    model = build_model(spec, num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    train_loader = _loader(train, train_transform(spec), spec, shuffle=True, seed=seed)
    val_loader = _loader(val, None, spec, shuffle=False, seed=seed)
    # With ``ema_decay`` the weights that are validated, kept and tested are a moving average over the
    # steps (BatchNorm statistics included): the best-val choice then picks among smoothed weights
    # rather than the noisy iterate of a high learning rate.
    averaged = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(spec.ema_decay), use_buffers=True)
        if spec.ema_decay
        else None
    )
    scored = averaged.module if averaged is not None else model

    best_val, best_epoch, best_state, history = -1.0, 0, None, []
    plateau = LrPlateau(spec.plateau_patience)
    train_seconds, seen = 0.0, 0
    for epoch in range(1, spec.max_epochs + 1):
        model.train()
        started, loss_sum, epoch_seen = time.perf_counter(), 0.0, 0
        for images, labels in train_loader:
            images, labels = normalize_batch(images.to(device)), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
            loss_sum += loss.item() * len(labels)
            epoch_seen += len(labels)
        train_seconds += time.perf_counter() - started
        seen += epoch_seen
        predictions, targets = predict(scored, val_loader, device)
        val_top1 = float((predictions == targets).mean())
        lr = optimizer.param_groups[0]["lr"]
        history.append({"epoch": epoch, "train_loss": loss_sum / max(1, epoch_seen), "val_top1": val_top1, "lr": lr})
        if val_top1 > best_val:
            best_val, best_epoch, best_state = val_top1, epoch, copy.deepcopy(scored.state_dict())
        if plateau.step(improved=epoch == best_epoch):
            for group in optimizer.param_groups:
                group["lr"] /= 10
        say(
            f"epoch {epoch}/{spec.max_epochs}: loss {loss_sum / max(1, epoch_seen):.3f} val top-1 "
            f"{val_top1:.4f} (best {best_val:.4f} @ {best_epoch}) lr {lr:g}"
        )
        if epoch - best_epoch >= spec.early_stop_patience:
            say(f"early stop: no val improvement for {spec.early_stop_patience} epochs")
            break

    stopped_early = epoch - best_epoch >= spec.early_stop_patience
    if not stopped_early:
        say(f"stopped at the epoch cap ({spec.max_epochs}) while val was still improving (best at {best_epoch})")
    model.load_state_dict(best_state)
    if test is None:
        predictions = targets = np.zeros(0, dtype=np.int64)
    else:
        predictions, targets = predict(model, _loader(test, None, spec, shuffle=False, seed=seed), device)
    return TrainResult(
        test_top1=float((predictions == targets).mean()) if len(targets) else float("nan"),
        best_val_top1=best_val,
        best_epoch=best_epoch,
        epochs_run=len(history),
        train_images=len(train),
        train_seconds=train_seconds,
        images_per_second=seen / train_seconds if train_seconds else 0.0,
        per_class_test_top1=per_class_accuracy(predictions, targets),
        stopped_early=stopped_early,
        history=history,
        state_dict={k: v.detach().cpu().contiguous() for k, v in best_state.items()},
    )
