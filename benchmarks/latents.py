"""Memory of ⑦ ⑨'s latents, held in memory or memory-mapped from disk:
``python -m benchmarks.latents [--images N]``.

On the smoke world (its foundation is built in a temporary home first), pseudo-word + DM (⑨) trains
one epoch on N training images (the smoke target's images listed over and over) in a fresh process,
once with every latent in memory and once memory-mapped (``PersonalizationSpec.latents_in_memory_gib``
below their size), and prints each process's peak resident memory, the latents' own size and the
seconds. Full ImageNet's latents (1.28 M images at SD's 4 × 64 × 64) would take about 150 GiB in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.run import machine

CHILD = """
import json, resource, sys, time
from pathlib import Path
import polars as pl
from diffusers import StableDiffusionPipeline
from augassets.core.finetune import ClassImages, FinetuneSpec, JointClass, finetune_jointly
from augassets.core.warehouse import Warehouse
from augassets.profiles import get_profile

images, limit, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
profile = get_profile("smoke")
splits = Warehouse(profile.tables).query("SELECT split, wnid, path FROM dataset_splits ORDER BY wnid, item")
wnids = sorted(splits["wnid"].unique())
pipeline = StableDiffusionPipeline.from_pretrained(profile.home / "store" / "models" / "stable_diffusion")
size = pipeline.vae.config.sample_size
classes = []
for wnid in wnids:
    mine = splits.filter(pl.col("wnid") == wnid)
    train = mine.filter(pl.col("split") == "target")["path"].to_list()
    val = mine.filter(pl.col("split") == "val")["path"].to_list()
    repeat = -(-images // (len(wnids) * len(train)))
    classes.append(JointClass(wnid, "", wnid, ClassImages((train * repeat)[: images // len(wnids)], val, size)))
spec = FinetuneSpec(max_epochs=1, patience=1, batch_size=64, reference_batch_size=64, val_draws=1, early_epochs=1)
started = time.perf_counter()
result = finetune_jointly(pipeline, classes, spec, 1e-5, folder, {"n": images}, ["a photo of {}"],
                          progress=lambda line: None, latents_max_bytes=limit)
vae = pipeline.vae.config
side = size // 2 ** (len(vae.block_out_channels) - 1)
total = sum(len(c.images.train) + len(c.images.val) for c in classes)
print(json.dumps({"latents": result.extra["latents"], "seconds": time.perf_counter() - started,
                  "latent_mib": 2 * total * vae.latent_channels * side * side * 4 / 2**20,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000, help="training images of the joint run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="augassets-latents-") as tmp:
        env = {**os.environ, "AUGASSETS_PROFILE": "smoke", "AUGASSETS_HOME": str(Path(tmp) / "home")}
        env.pop("DAGSTER_HOME", None)
        cli = str(Path(sys.executable).with_name("augassets"))
        subprocess.run([cli, "foundation"], env=env, check=True, capture_output=True)
        rows = []
        for limit in (0, 1):  # 0: no limit (in memory); 1 byte: always memory-mapped
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.images), str(limit), str(Path(tmp) / f"run_{limit}")],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"# ⑨'s latents in memory and memory-mapped ({args.images:,} smoke images) on {machine()}\n")
    print("| latents | their size (MiB) | peak RSS (MiB) | seconds (one epoch, encoding included) |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['latents']} | {row['latent_mib']:.0f} | {row['peak_rss_mib']:.0f} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
