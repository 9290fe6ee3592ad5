"""Memory of ⑦ ⑨'s latents, held in memory or memory-mapped from disk:
``python -m benchmarks.latents [--images N]``.

On the smoke world (its foundation is built in a temporary home first), a fresh process encodes the
VAE latents of N training images (the smoke target's images listed over and over) as ⑦ ⑨'s joint
fine-tuning does, once held in memory and once memory-mapped (``PersonalizationSpec.latents_in_memory_gib``
below their size), then reads 200 training batches of 64 from them, and prints its anonymous memory
(what the kernel cannot reclaim), its file-backed memory (mapped pages it can drop and read again), its
peak resident memory, the latents' own size and the seconds. The training on them is the same to the last bit
either way (``test_foundation.py``). Full ImageNet's latents (1.28 M images at SD's 4 × 64 × 64)
would take about 150 GiB in memory.
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
import torch
from diffusers import AutoencoderKL
from augassets.core.diffusion import encode_latent_distribution
from augassets.core.warehouse import Warehouse
from augassets.profiles import get_profile

images, limit, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
profile = get_profile("smoke")
paths = Warehouse(profile.tables).query("SELECT path FROM dataset_splits WHERE split = 'target'")["path"].to_list()
paths = (paths * (images // len(paths) + 1))[:images]
vae = AutoencoderKL.from_pretrained(profile.home / "store" / "models" / "stable_diffusion" / "vae")
size = vae.config.sample_size
started = time.perf_counter()
mean, std = encode_latent_distribution(vae, paths, size, spill=(folder, limit) if limit else None)
generator = torch.Generator().manual_seed(0)
total = 0.0
for _ in range(200):  # what training reads: random batches of 64
    rows = torch.randint(len(paths), (64,), generator=generator)
    total += float((mean[rows] + std[rows]).sum())
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
kib = lambda name: int(status[name].split()[0]) / 1024
print(json.dumps({"latents": "disk" if limit else "memory", "seconds": time.perf_counter() - started,
                  "latent_mib": 2 * mean.numel() * 4 / 2**20, "anon_mib": kib("RssAnon"), "file_mib": kib("RssFile"),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="training images whose latents are encoded")
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
    print(
        "| latents | their size (MiB) | anonymous memory at the end (MiB) | file-backed, reclaimable (MiB) "
        "| peak RSS (MiB) | seconds (encoding + 200 batches) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['latents']} | {row['latent_mib']:.0f} | {row['anon_mib']:.0f} | {row['file_mib']:.0f} "
            f"| {row['peak_rss_mib']:.0f} | {row['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
