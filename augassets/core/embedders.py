"""Image embedders for ⑥'s clusters.

The paper clusters a class's training images with k-means "on the inception v3 embeddings" (§3.1):
torchvision's Inception-v3 with its ImageNet weights, the 2,048-d pool features before the classifier.
The weights come from the local torch hub cache only (``$TORCH_HOME/hub/checkpoints``; nothing is
downloaded). The mini world clusters on its own CLIP image tower instead: an ImageNet Inception knows
nothing of its world (``PersonalizationSpec.cluster_embedder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .images import load_rgb

INCEPTION_SIZE = 299
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what torchvision's Inception-v3 weights expect
EMBEDDERS = ("inception_v3", "inception_v3_untrained", "clip")


class EmbedderError(RuntimeError):
    """An embedder that cannot be built here; the message names the setting to change."""


def inception_v3_pool(pretrained: bool = True) -> nn.Module:
    """torchvision's Inception-v3 giving its 2,048-d pool features (``fc`` removed), in eval mode.
    ``pretrained``: its ImageNet weights from the torch hub cache (an error naming the file where they are
    missing); False: the architecture with random weights (tests)."""
    from torchvision.models import Inception_V3_Weights, inception_v3

    if not pretrained:
        with torch.random.fork_rng():  # the same random weights every time, the caller's random stream untouched
            torch.manual_seed(0)
            model = inception_v3(weights=None, aux_logits=False, init_weights=True)
    else:
        weights = Inception_V3_Weights.IMAGENET1K_V1
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            raise EmbedderError(
                f"Inception-v3's ImageNet weights are not in the torch hub cache: put {weights.url} at {cached} "
                f"(or point "
                "TORCH_HOME at a cache that has them), or set personalization.cluster_embedder to 'clip'"
            )
        # As torchvision builds it for these weights: inputs re-normalized inside, the auxiliary head loaded
        # then dropped.
        model = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
        model.load_state_dict(torch.load(cached, weights_only=True))
        model.aux_logits, model.AuxLogits = False, None
    model.fc = nn.Identity()
    return model.eval()


@torch.no_grad()
def inception_embeddings(model: nn.Module, paths: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """L2-normalized pool features of the images at ``paths`` (resized to 299 px, ImageNet-normalized)."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(paths), batch_size):
        batch = [load_rgb(path).resize((INCEPTION_SIZE, INCEPTION_SIZE)) for path in paths[start : start + batch_size]]
        pixels = torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) / 255 for image in batch])).permute(
            0, 3, 1, 2
        )
        out.append(F.normalize(model((pixels - mean) / std), dim=-1).numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, 2048), dtype=np.float32)
