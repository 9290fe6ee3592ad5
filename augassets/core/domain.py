"""Domain match: how far a method's images are from the target's domain, by one figure that does
not depend on the method.

The figure is a classifier two-sample test: a linear classifier learns to tell target images from a
method's images by their (frozen) image embeddings, and its held-out accuracy is reported. 0.5 means
the two sets are indistinguishable to it; 1.0 means every image's domain is recognizable. The paper's
claim for personalization is that it moves generations toward the target's domain: its images should
be harder to tell apart from the target's than the prompt methods' are.

Both sets are first balanced per class (the same number of images of each class on both sides), so
the classifier cannot tell the domains apart by which classes they show; accuracy is the mean over
``folds`` stratified folds.
"""

from __future__ import annotations

import numpy as np
import torch


def balanced_pairs(target_labels: np.ndarray, method_labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into each set: per class, as many of each as the smaller side has (seeded draw)."""
    rng = np.random.default_rng(seed)
    keep_t, keep_m = [], []
    for label in np.intersect1d(target_labels, method_labels):
        t, m = np.flatnonzero(target_labels == label), np.flatnonzero(method_labels == label)
        n = min(len(t), len(m))
        keep_t.append(rng.choice(t, n, replace=False))
        keep_m.append(rng.choice(m, n, replace=False))
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(keep_t) if keep_t else empty), (np.concatenate(keep_m) if keep_m else empty)


def _fit_predict(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, weight_decay: float, steps: int
) -> torch.Tensor:
    """Logistic regression (full-batch L-BFGS, L2) on standardized features; predicted labels of ``test_x``."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weights = torch.zeros(train_x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = train_x @ weights + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, train_y) + weight_decay * (weights**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (test_x @ weights + bias > 0).float()


def domain_separability(
    target: np.ndarray,
    target_labels: np.ndarray,
    images: np.ndarray,
    image_labels: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    weight_decay: float = 1e-3,
    steps: int = 100,
) -> tuple[float, int]:
    """Held-out accuracy of a linear classifier telling ``target`` embeddings from ``images``
    embeddings (rows; labels: their classes), after balancing per class; returns (accuracy, images
    per side). NaN when fewer than ``folds`` images per side remain."""
    t_index, m_index = balanced_pairs(np.asarray(target_labels), np.asarray(image_labels), seed)
    n = len(t_index)
    if n < folds:
        return float("nan"), n
    x = torch.from_numpy(np.concatenate([target[t_index], images[m_index]]).astype(np.float32))
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    # Stratified folds: each fold takes every folds-th pair, so both sides stay balanced in it.
    order = np.random.default_rng(seed + 1).permutation(n)
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[order] = np.arange(n) % folds
    fold_of = torch.from_numpy(np.concatenate([fold_of, fold_of]))
    correct = 0.0
    for fold in range(folds):
        test = fold_of == fold
        predicted = _fit_predict(x[~test], y[~test], x[test], weight_decay, steps)
        correct += float((predicted == y[test]).sum())
    return correct / (2 * n), n
