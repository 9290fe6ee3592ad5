"""How the web pool's design moves the mini world's calibration figures, without a whole foundation:
``python -m benchmarks.pool_variants [--variants NAME ...] [--seeds 0 1]``.

For each pool variant (``VARIANTS``: overrides of the profile's ``PoolSpec``, and of its ``ClipSpec``
under ``clip``) and pool draw (its ``seed``), the pool's class images are made as ``web_pool`` makes them (no
distractors, plants or
NSFW markers: they do not move these figures), the profile's CLIP is trained on them with their
captions, and two figures are measured on the profile's splits:

- CLIP zero-shot top-1 on the test split ("A photo of {name}."; target ≥ 0.65);
- the domain transfer ratio: a classifier trained on the target (the protocol's real_p run, seed 0)
  on 100 held-out web-domain images per class made from unused training images ÷ on the test split
  (declared 0.5–0.8).

Every figure is a property of the world; none depends on which augmentation method wins.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.run import machine

VARIANTS = {
    "current": {},
    "posed": {"web_scale": (0.6, 1.1), "web_rotation": 25.0, "web_shift": 4},
    "posed_lit": {"web_scale": (0.6, 1.1), "web_rotation": 25.0, "web_shift": 4, "background_strength": 0.4},
    "current_clip36": {"clip": {"epochs": 36}},
    "posed_lit_mild_clip36": {
        "web_scale": (0.6, 1.1),
        "web_rotation": 25.0,
        "web_shift": 4,
        "background_strength": 0.4,
        "web_colour": (0.5, 1.0),
        "clip": {"epochs": 36},
    },
    "posed_lit_clip36": {
        "web_scale": (0.6, 1.1),
        "web_rotation": 25.0,
        "web_shift": 4,
        "background_strength": 0.4,
        "clip": {"epochs": 36},
    },
    "posed_lit_mild_clip60": {
        "web_scale": (0.6, 1.1),
        "web_rotation": 25.0,
        "web_shift": 4,
        "background_strength": 0.4,
        "web_colour": (0.5, 1.0),
        "clip": {"epochs": 60},
    },
    "posed_lit_mild_clip36_deep": {
        "web_scale": (0.6, 1.1),
        "web_rotation": 25.0,
        "web_shift": 4,
        "background_strength": 0.4,
        "web_colour": (0.5, 1.0),
        "clip": {"epochs": 36, "layers": 4},
    },
}


def measure(profile_name: str, variant: str, seed: int, workdir: Path) -> dict:
    import torch

    from augassets.core.catalog import build_catalog
    from augassets.core.classifier import LabeledImages, train_classifier
    from augassets.core.clip import build_processor, train_clip, zero_shot_accuracy
    from augassets.core.datasets import FashionMnistSource, make_splits
    from augassets.core.files import file_url_path
    from augassets.core.generation import classify_images
    from augassets.core.judge import web_rendering
    from augassets.core.prompts import simple_prompt
    from augassets.core.web_pool import PoolSources, pool_items, write_pool
    from augassets.profiles import get_profile

    profile = get_profile(profile_name)
    torch.set_num_threads(profile.torch_threads or torch.get_num_threads())
    overrides = dict(VARIANTS[variant])
    clip_spec = replace(profile.world.clip, **overrides.pop("clip", {}))
    spec = replace(
        profile.world.pool,
        **overrides,
        seed=seed,
        distractors=0,
        planted_test_duplicates=0,
        planted_val_duplicates=0,
        nsfw_rate=0.0,
    )
    catalog = build_catalog(profile.dataset, profile.max_classes)
    splits, _ = make_splits(catalog, profile.dataset, profile.split, workdir / "export", progress=lambda line: None)
    source = FashionMnistSource(profile.dataset, workdir / "export")
    used = set(splits.filter(pl.col("split") != "test")["item"])
    rng = np.random.default_rng([seed, 17])
    class_items, holdout = {}, []
    for row in catalog.iter_rows(named=True):
        unused = [item for item in source.items("train", row["wnid"], row["source_label"]) if item not in used]
        order = [unused[i] for i in rng.permutation(len(unused))]
        class_items[row["wnid"]] = order[: spec.per_class]
        holdout += [(item, row["label"]) for item in order[spec.per_class : spec.per_class + 100]]
    sources = PoolSources(
        pixels=source.pixels,
        target_image=source.image,
        class_items=class_items,
        duplicate_items=[],
        lemmas={r["wnid"]: list(r["lemmas"]) for r in catalog.iter_rows(named=True)},
        hypernyms=dict(zip(catalog["wnid"], catalog["hypernym"])),
    )
    folder = workdir / f"pool_{variant}_{seed}"
    metadata, _ = write_pool(pool_items(sources, spec), folder, folder)
    paths = [file_url_path(u) for u in metadata["url"]]
    started = time.perf_counter()
    processor = build_processor(workdir / "processor", spec.image_size)
    clip = train_clip(
        paths,
        metadata["caption"].to_list(),
        processor.tokenizer,
        clip_spec,
        spec.image_size,
        progress=lambda line: None,
    )
    clip_seconds = time.perf_counter() - started
    test = splits.filter(pl.col("split") == "test").sort("label", "item")
    prompts = [simple_prompt(name) for name in catalog["name"]]
    zero_shot, per_class = zero_shot_accuracy(
        clip.model, processor.tokenizer, test["path"].to_list(), test["label"].to_list(), prompts, spec.image_size
    )
    part = lambda name: splits.filter(pl.col("split") == name)  # noqa: E731
    labeled = lambda f: LabeledImages(f["path"].to_list(), f["label"].to_list())  # noqa: E731
    target = train_classifier(
        labeled(part("target")),
        labeled(part("val")),
        labeled(test),
        catalog.height,
        profile.classifier,
        seed=0,
        progress=lambda line: None,
    )
    web = [web_rendering(source.pixels(item), item, spec) for item, _ in holdout]
    on_web = float(
        (
            classify_images(target.state_dict, profile.classifier, catalog.height, web)
            == np.array([c for _, c in holdout])
        ).mean()
    )
    row = {
        "variant": variant,
        "seed": seed,
        "zero_shot": zero_shot,
        "zero_shot_min_class": min(per_class.values()),
        "target_on_test": target.test_top1,
        "target_on_web": on_web,
        "transfer_ratio": on_web / target.test_top1,
        "clip_seconds": clip_seconds,
    }
    print(
        f"  {variant} seed {seed}: zero-shot {zero_shot:.3f} (lowest class {row['zero_shot_min_class']:.2f}), transfer "
        f"{on_web:.3f} / {target.test_top1:.3f} = {row['transfer_ratio']:.3f}, CLIP {clip_seconds:.0f} s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="pool draws (PoolSpec.seed)")
    args = parser.parse_args()
    print(f"# Pool variants ({args.profile}) on {machine()}\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="augassets-pool-") as tmp:
        for variant in args.variants:
            for seed in args.seeds:
                rows.append(measure(args.profile, variant, seed, Path(tmp)))
    frame = pl.DataFrame(rows)
    print("\n| variant | settings | CLIP zero-shot (mean, range over draws) | transfer ratio (mean, range) | CLIP s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for variant in args.variants:
        mine = frame.filter(pl.col("variant") == variant)
        zs, tr = mine["zero_shot"], mine["transfer_ratio"]
        settings = ", ".join(f"{k}={v}" for k, v in VARIANTS[variant].items()) or "the profile's"
        print(
            f"| {variant} | {settings} | {zs.mean():.3f} ({zs.min():.3f}–{zs.max():.3f}) | {tr.mean():.3f} "
            f"({tr.min():.3f}–{tr.max():.3f}) | "
            f"{mine['clip_seconds'].mean():.0f} |"
        )


if __name__ == "__main__":
    main()
