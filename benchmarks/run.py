"""The performance harness: ``python -m benchmarks.run [main] [classifier] [threads] [duplicates] [phash]
[foundation] [generation] [store] [daemon]`` (default: all but threads and daemon) prints a table.

main        the README's main command on a fresh AUGASSETS_HOME (cold), then again (warm: cached),
            its peak resident memory, and the share of wall time spent outside asset bodies
            (Dagster's overhead: process start, definitions import, run launch, event log, metadata).
foundation  the mini world's foundation (`augassets foundation`): wall time, each asset's step time,
            and its quality figures (CLIP zero-shot top-1, safety checker precision/recall, class fidelity).
duplicates  pHash duplicate search (Hamming < 10) on 100k × 100k codes: ours vs faiss IndexBinaryFlat
            vs a plain loop over imagehash differences; ImageNet-scale estimate.
phash       pHash throughput and bit agreement vs imagehash.phash (ImageNet-like JPEGs, mini PNGs).
generation  the profile's SD pipeline: batched seeded generation vs one image per call (needs the
            foundation of $AUGASSETS_HOME).
store       the image store on an fsspec URL (memory://, so the figures are the store layer's own cost
            without a network): publish and fetch of 5,000 mini-sized PNGs and 16 MB files, first and
            unchanged, vs a plain recursive fsspec put/get of the same folder.
daemon      a real `dagster-daemon` on a benchmarked home (of `main`, or $AUGASSETS_HOME) of a profile whose
            backfill cron ticks every minute (smoke): the duplicate reports are wiped, the `scheduled_backfill`
            sensor started; time to the tick's backfill, the backfill's runs (wall time vs step time), the
            downstream report, and what the next tick requests (nothing, if all is well).
classifier  training throughput (images/s) of the profile's classifier on its real target images
            (the splits of `main`, or of $AUGASSETS_HOME when run alone), and of torchvision's
            ResNet-50 at 224 px (the real profiles' model) on random batches.
threads     the profile's classifier as one process of 2 threads, of 1 thread, and as two 1-thread
            processes at once (what Profile.workers gains; the splits of $AUGASSETS_HOME).
layout      the profile's classifier on one thread (as a worker trains it), on random images of its size:
            where an epoch's time goes (random crops and batching, SGD steps, the val pass), and the SGD
            step and val pass again with channels-last tensors, a lever the protocol does not use yet, and
            with PyTorch's own convolutions instead of oneDNN's (docs/running.md, Reproducible numbers).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {device}, torch {torch.__version__}"


def bench_main(profile: str, home: Path) -> list[tuple[str, str]]:
    """Wall time of `augassets benchmark` cold and warm, and Dagster's share of the cold run."""
    env = {**os.environ, "AUGASSETS_PROFILE": profile, "AUGASSETS_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    command = [str(Path(sys.executable).with_name("augassets")), "benchmark"]
    rows = []
    for label in ("cold", "warm"):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows.append((f"main command ({profile}, {label})", f"{time.perf_counter() - started:.1f} s"))
        if label == "cold":
            peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            peak_row = (f"main command ({profile}, cold) peak resident memory", f"{peak_mib:.0f} MiB")
    rows.append(peak_row)
    os.environ["DAGSTER_HOME"] = str(home / profile / "dagster")
    import dagster as dg

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    run_seconds = sum(r.end_time - r.start_time for r in (instance.get_run_record_by_id(x.run_id) for x in runs))
    step_seconds = sum(
        (s.end_time or 0) - (s.start_time or 0) for r in runs for s in instance.get_run_step_stats(r.run_id)
    )
    rows.append((f"runs launched ({profile}, cold + warm)", str(len(runs))))
    rows.append(
        ("time inside runs, outside asset steps", f"{run_seconds - step_seconds:.1f} s of {run_seconds:.1f} s run time")
    )
    cold_wall = float(rows[0][1].split()[0])  # the warm run adds no steps: everything is cached
    rows.append(
        ("Dagster overhead share of the cold wall time", f"{100 * (cold_wall - step_seconds) / cold_wall:.1f} %")
    )
    return rows


FOUNDATION_ASSETS = [
    "fidelity_classifier",
    "web_pool",
    "clip_model",
    "pool_index",
    "vae",
    "unet",
    "diffusion_model",
    "diffusion_fidelity",
]
QUALITY = {
    "clip_model": ["zero_shot_top1", "chance", "final_contrastive_loss"],
    "vae": ["reconstruction_mse"],
    "unet": ["training_images"],
    "diffusion_model": ["safety_precision_held_out", "safety_recall_held_out"],
    "diffusion_fidelity": ["class_fidelity", "relative_class_fidelity", "samples_per_second"],
    "fidelity_classifier": ["test_top1"],
    "web_pool": ["images", "nsfw_flagged", "aesthetic_below_5", "planted_duplicates"],
}


def bench_foundation(profile: str, home: Path) -> list[tuple[str, str]]:
    """`augassets foundation` wall time, each asset's step time, and the quality figures it reports."""
    env = {**os.environ, "AUGASSETS_PROFILE": profile, "AUGASSETS_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).with_name("augassets")), "foundation"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = [
        (
            f"foundation ({profile}: catalog, splits, pool, CLIP, index, VAE, UNet, SD)",
            f"{time.perf_counter() - started:.1f} s",
        )
    ]
    os.environ["DAGSTER_HOME"] = str(home / profile / "dagster")
    import dagster as dg

    instance = dg.DagsterInstance.get()
    for name in FOUNDATION_ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        stats = [s for s in instance.get_run_step_stats(event.run_id) if s.step_key == name]
        if stats:
            rows.append((f"  {name} step", f"{stats[0].end_time - stats[0].start_time:.1f} s"))
        metadata = event.asset_materialization.metadata
        for key in QUALITY.get(name, []):
            value = metadata[key].value
            rows.append((f"  {name}.{key}", f"{value:.4f}" if isinstance(value, float) else str(value)))
    return rows


def bench_duplicates(n: int = 100_000) -> list[tuple[str, str]]:
    """Duplicate search on n × n random 64-bit codes: ours (core.duplicates) vs faiss IndexBinaryFlat
    range search vs a plain loop over imagehash differences (sampled), and the ImageNet-scale estimate."""
    import faiss
    import imagehash

    from augassets.core.duplicates import duplicate_pairs

    rng = np.random.default_rng(0)
    queries = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    database = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    pairs = float(n) * n
    started = time.perf_counter()
    q, _, _ = duplicate_pairs(queries, database)
    ours = pairs / (time.perf_counter() - started)
    index = faiss.IndexBinaryFlat(64)
    index.add(database)
    started = time.perf_counter()
    index.range_search(queries, 10)
    reference = pairs / (time.perf_counter() - started)
    hashes_q = [imagehash.ImageHash(np.unpackbits(queries[i]).reshape(8, 8).astype(bool)) for i in range(300)]
    hashes_d = [imagehash.ImageHash(np.unpackbits(database[i]).reshape(8, 8).astype(bool)) for i in range(300)]
    started = time.perf_counter()
    close = sum(1 for a in hashes_q for b in hashes_d if a - b < 10)
    loop = 300 * 300 / (time.perf_counter() - started)
    imagenet_pairs = 1.28e6 * 1.33e6  # the ImageNet-scale figure: augmentation images × reference images
    return [
        (
            f"duplicate search, ours (faiss binary range search in blocks), {n:,} × {n:,}",
            f"{ours:.3g} pairs/s ({len(q)} pairs < 10)",
        ),
        ("duplicate search, faiss IndexBinaryFlat.range_search, one call", f"{reference:.3g} pairs/s"),
        (
            "duplicate search, plain loop over imagehash differences (300 × 300 sample)",
            f"{loop:.3g} pairs/s ({close} pairs < 10)",
        ),
        ("ratio ours / faiss", f"{ours / reference:.2f}"),
        ("ratio ours / imagehash loop", f"{ours / loop:,.0f}"),
        ("ImageNet scale (1.28M × 1.33M pairs) at our rate, this machine", f"{imagenet_pairs / ours / 60:.1f} min"),
    ]


def bench_phash() -> list[tuple[str, str]]:
    """pHash throughput and agreement vs imagehash.phash on ImageNet-like JPEGs and on mini PNGs."""
    import imagehash
    from PIL import Image, ImageDraw, ImageFilter

    from augassets.core.phash import from_hex, hamming, phash_files

    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="augassets-phash-"))
    sets = {"ImageNet-like JPEG 500×375": [], "mini PNG 32×32": []}
    for i in range(400):
        for name, size, fmt in (
            ("ImageNet-like JPEG 500×375", (500, 375), "JPEG"),
            ("mini PNG 32×32", (32, 32), "PNG"),
        ):
            image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(image)
            for _ in range(8):
                x0, y0 = int(rng.integers(0, size[0] - 4)), int(rng.integers(0, size[1] - 4))
                draw.ellipse(
                    [x0, y0, x0 + int(rng.integers(3, size[0] // 2)), y0 + int(rng.integers(3, size[1] // 2))],
                    fill=tuple(int(c) for c in rng.integers(0, 255, 3)),
                )
            path = folder / f"{fmt}_{i}.{fmt.lower()}"
            image.filter(ImageFilter.GaussianBlur(size[0] / 200)).save(
                path, quality=90
            ) if fmt == "JPEG" else image.save(path)
            sets[name].append(str(path))
    rows = []
    for name, paths in sets.items():
        started = time.perf_counter()
        reference = from_hex([str(imagehash.phash(Image.open(p))) for p in paths])
        base = len(paths) / (time.perf_counter() - started)
        for decode in ("exact", "gray", "reduced"):
            started = time.perf_counter()
            hashes, _ = phash_files(paths, decode=decode)
            rate = len(paths) / (time.perf_counter() - started)
            distances = hamming(hashes, reference)
            rows.append(
                (
                    f"pHash {name}, ours (decode={decode}) vs imagehash.phash",
                    f"{rate:.0f} vs {base:.0f} images/s = {rate / base:.1f}×, bit-identical "
                    f"{100 * float((distances == 0).mean()):.1f} %, max {distances.max()} bits off",
                )
            )
    return rows


def bench_store(small: int = 5000, large: int = 16) -> list[tuple[str, str]]:
    """Publish/fetch through core.store on memory:// vs plain fsspec put/get of the same folder."""
    import uuid

    import fsspec
    from PIL import Image

    from augassets.core.store import Store

    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="augassets-store-"))
    rows = []
    for name, count, write in (
        (
            f"{small:,} PNGs 32×32",
            small,
            lambda path, i: Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path, format="PNG"),
        ),
        (f"{large} files of 16 MB", large, lambda path, i: path.write_bytes(rng.bytes(16 << 20))),
    ):
        url = f"memory://bench-{uuid.uuid4().hex}"
        store = Store(url, str(work / "a"))
        folder = store.path("set")
        folder.mkdir(parents=True)
        for i in range(count):
            write(folder / f"{i:05d}.bin", i)
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        timings = {}
        for label, action in (
            ("publish", lambda store=store: store.publish("set")),
            ("publish unchanged", lambda store=store: store.publish("set")),
            ("fetch into an empty working copy", lambda url=url: Store(url, str(work / "b")).fetch("set")),
            ("fetch unchanged", lambda url=url: Store(url, str(work / "b")).fetch("set")),
        ):
            started = time.perf_counter()
            action()
            timings[label] = time.perf_counter() - started
        fs = fsspec.filesystem("memory")
        started = time.perf_counter()
        fs.put(str(folder), f"/plain-{uuid.uuid4().hex}", recursive=True)
        plain_put = time.perf_counter() - started
        started = time.perf_counter()
        fs.get(store.key("set"), str(work / "plain_get"), recursive=True)
        plain_get = time.perf_counter() - started
        for label, seconds in timings.items():
            rows.append(
                (
                    f"store {label}, {name} ({size_mb:.0f} MB), memory://",
                    f"{seconds:.2f} s = {count / seconds:,.0f} files/s",
                )
            )
        rows.append((f"plain fsspec put / get, {name}", f"{plain_put:.2f} s / {plain_get:.2f} s"))
        shutil.rmtree(work)
        work.mkdir()
    return rows


def bench_generation(profile_name: str, images: int = 64) -> list[tuple[str, str]]:
    """Generation throughput of the profile's SD pipeline: the batched, seeded path
    (core.generation.generate, one generator per image) vs a naive one-image-per-call loop."""
    import torch

    from augassets.core.generation import generate
    from augassets.profiles import get_profile
    from augassets.resources import default_resources

    profile = get_profile(profile_name)
    backend = default_resources(profile)["diffusion_backend"]
    if not Path(backend.weights).exists():
        raise SystemExit(f"no pipeline at {backend.weights}: run `augassets foundation` on {profile_name} first")
    pipeline = backend.load("txt2img")
    prompts = ["A photo of boot."] * images
    seeds = list(range(images))
    generate(pipeline, prompts[:2], seeds[:2], backend.steps, backend.guidance_scale, 2)  # warm-up
    started = time.perf_counter()
    generate(pipeline, prompts, seeds, backend.steps, backend.guidance_scale, backend.batch_size)
    batched = images / (time.perf_counter() - started)
    started = time.perf_counter()
    for prompt, seed in zip(prompts, seeds):
        pipeline(
            prompt,
            num_inference_steps=backend.steps,
            guidance_scale=backend.guidance_scale,
            generator=torch.Generator().manual_seed(seed),
        )
    naive = images / (time.perf_counter() - started)
    label = (
        f"{profile_name} SD, {backend.steps} {backend.scheduler} steps, guidance {backend.guidance_scale}, "
        f"{images} images"
    )
    return [
        (f"generation, batched seeded path (batch {backend.batch_size}), {label}", f"{batched:.1f} images/s"),
        (f"generation, naive one image per call, {label}", f"{naive:.1f} images/s"),
        ("ratio batched / naive", f"{batched / naive:.1f}"),
    ]


def target_and_val(profile_name: str):
    """The profile's target and val splits as ``LabeledImages`` (from ``$AUGASSETS_HOME``), and its class count."""
    from augassets.core.classifier import LabeledImages
    from augassets.core.warehouse import Warehouse
    from augassets.profiles import get_profile

    profile = get_profile(profile_name)
    db = Warehouse(profile.tables)
    if not db.has_table("dataset_splits"):
        raise SystemExit(f"no splits in {profile.tables}: run `augassets benchmark` on {profile_name} first")
    frame = lambda split: db.query("SELECT path, label FROM dataset_splits WHERE split = ? ORDER BY item", [split])  # noqa: E731
    target, val = frame("target"), frame("val")
    labeled = lambda f: LabeledImages(f["path"].to_list(), f["label"].to_list())  # noqa: E731
    return labeled(target), labeled(val), int(target["label"].max()) + 1


def bench_classifier(profile_name: str) -> list[tuple[str, str]]:
    from dataclasses import replace

    import torch
    import torch.nn.functional as F
    from torchvision.models import resnet50

    os.environ["AUGASSETS_PROFILE"] = profile_name
    from augassets.core.classifier import train_classifier
    from augassets.profiles import get_profile

    target, val, classes = target_and_val(profile_name)
    spec = replace(get_profile(profile_name).classifier, max_epochs=5, early_stop_patience=100)
    result = train_classifier(target, val, val, classes, spec, seed=0)
    rows = [
        (
            f"{spec.arch} training ({profile_name}, {len(target.paths)} images, batch {spec.batch_size}, 5 epochs)",
            f"{result.images_per_second:.0f} images/s",
        )
    ]

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = 256 if device == "cuda" else 16
    model = resnet50(num_classes=1000).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    steps = 20 if device == "cuda" else 3
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    rate = steps * batch / (time.perf_counter() - started)
    rows.append(
        (f"ResNet-50 training step, 224 px, batch {batch}, fp32, {device} (random data)", f"{rate:.1f} images/s")
    )
    return rows


def bench_layout(profile_name: str, epochs: int = 20, val_images: int = 470) -> list[tuple[str, str]]:
    """One epoch of the profile's classifier split into its parts, and the steps and val pass with
    channels-last tensors (a different memory layout: the same model, other kernels and roundings)."""
    import importlib

    importlib.import_module("augassets")  # first: it pins the CPU kernels (core/determinism.py) before torch loads
    import torch
    import torch.nn.functional as F

    from augassets.core.classifier import build_model, normalize_batch, train_transform
    from augassets.profiles import get_profile

    torch.set_num_threads(1)
    spec = get_profile(profile_name).classifier
    generator = torch.Generator().manual_seed(0)
    size, n = spec.image_size, 280  # a real_2p-sized set
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    val = normalize_batch(torch.randint(0, 256, (val_images, 3, size, size), dtype=torch.uint8, generator=generator))
    transform = train_transform(spec)

    class Cropped(torch.utils.data.Dataset):  # as the classifier's dataset: a random crop per image on access
        def __len__(self):
            return n

        def __getitem__(self, i):
            return transform(images[i]), labels[i]

    samples = max(n, spec.min_steps_per_epoch * spec.batch_size)
    sampler = torch.utils.data.RandomSampler(range(n), num_samples=samples, generator=generator)
    loader = torch.utils.data.DataLoader(Cropped(), batch_size=spec.batch_size, sampler=sampler)
    seconds = {}
    variants = {  # name: (memory layout, oneDNN's convolutions)
        "contiguous": (torch.contiguous_format, True),
        "channels-last": (torch.channels_last, True),
        "own": (torch.contiguous_format, False),  # PyTorch's own convolutions: oneDNN and NNPACK off
    }
    for name, (layout, onednn) in variants.items():
        with torch.backends.mkldnn.flags(enabled=onednn), torch.backends.nnpack.flags(enabled=onednn):
            torch.manual_seed(0)
            model = build_model(spec, 10).to(memory_format=layout)
            optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
            data = steps = evaluation = 0.0
            for _ in range(epochs):
                model.train()
                started = time.perf_counter()
                for x, y in loader:
                    ready = time.perf_counter()
                    data += ready - started
                    loss = F.cross_entropy(model(normalize_batch(x).contiguous(memory_format=layout)), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss.item()
                    started = time.perf_counter()
                    steps += started - ready
                model.eval()
                started = time.perf_counter()
                with torch.no_grad():
                    for i in range(0, val_images, spec.batch_size):
                        model(val[i : i + spec.batch_size].contiguous(memory_format=layout)).argmax(1)
                evaluation += time.perf_counter() - started
            seconds[name] = (data / epochs, steps / epochs, evaluation / epochs)
    data, steps, evaluation = seconds["contiguous"]
    _, steps_cl, evaluation_cl = seconds["channels-last"]
    _, steps_own, evaluation_own = seconds["own"]
    total = data + steps + evaluation
    what = f"{spec.arch} w{spec.width} {size} px, batch {spec.batch_size}, {samples // spec.batch_size} steps an epoch"
    return [
        (
            f"one epoch ({what}, {val_images} val images, 1 thread)",
            f"{1000 * total:.0f} ms: crops {100 * data / total:.0f} %, SGD steps {100 * steps / total:.0f} %, "
            f"val pass {100 * evaluation / total:.0f} %",
        ),
        (
            "SGD steps of an epoch, contiguous → channels-last",
            f"{1000 * steps:.0f} → {1000 * steps_cl:.0f} ms ({100 * (1 - steps_cl / steps):.0f} % less)",
        ),
        (
            "val pass, contiguous → channels-last",
            f"{1000 * evaluation:.0f} → {1000 * evaluation_cl:.0f} ms "
            f"({100 * (1 - evaluation_cl / evaluation):.0f} % less)",
        ),
        (
            "SGD steps / val pass, oneDNN's convolutions → PyTorch's own (oneDNN and NNPACK off)",
            f"{1000 * steps:.0f} → {1000 * steps_own:.0f} ms ({100 * (steps_own / steps - 1):+.0f} %) / "
            f"{1000 * evaluation:.0f} → {1000 * evaluation_own:.0f} ms "
            f"({100 * (evaluation_own / evaluation - 1):+.0f} %)",
        ),
    ]


def train_with_threads(profile_name: str, threads: int) -> None:
    """One classifier training with ``threads`` CPU threads (a child process of ``bench_threads``):
    prints its images/s and wall seconds as JSON."""
    import importlib
    import json
    from dataclasses import replace

    importlib.import_module("augassets")  # first: it pins the CPU kernels (core/determinism.py) before torch loads
    import torch

    torch.set_num_threads(threads)
    from augassets.core.classifier import LabeledImages, train_classifier
    from augassets.profiles import get_profile

    target, val, classes = target_and_val(profile_name)
    # The target four times over: about the size of a target plus its augmentation set.
    train = LabeledImages(target.paths * 4, target.labels * 4)
    spec = replace(get_profile(profile_name).classifier, max_epochs=8, early_stop_patience=100)
    started = time.perf_counter()
    result = train_classifier(train, val, val, classes, spec, seed=0)
    print(json.dumps({"images_per_second": result.images_per_second, "seconds": time.perf_counter() - started}))


def bench_threads(profile_name: str) -> list[tuple[str, str]]:
    """The profile's classifier trained (8 epochs, on its target four times over, val each epoch) as one
    process with 2 threads, one with 1 thread, and two 1-thread processes at once: what Profile.workers
    gains on a 2-core machine."""
    import json

    def start(threads: int) -> subprocess.Popen:
        code = f"from benchmarks.run import train_with_threads; train_with_threads({profile_name!r}, {threads})"
        return subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )

    def finish(process: subprocess.Popen) -> dict:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(
                f"the training child failed ({process.returncode}); run `augassets benchmark` on {profile_name} first"
            )
        return json.loads(out.strip().splitlines()[-1])

    rows = []
    for threads in (2, 1):
        one = finish(start(threads))
        rows.append(
            (
                f"classifier training ({profile_name}), 1 process × {threads} threads",
                f"{one['images_per_second']:.0f} images/s ({one['seconds']:.1f} s)",
            )
        )
    started = time.perf_counter()
    pair = [finish(p) for p in [start(1), start(1)]]
    wall = time.perf_counter() - started
    rows.append(
        (
            f"classifier training ({profile_name}), 2 processes × 1 thread at once",
            f"{sum(r['images_per_second'] for r in pair):.0f} images/s together ({wall:.1f} s for both)",
        )
    )
    return rows


def bench_daemon(profile_name: str, home: Path) -> list[tuple[str, str]]:
    """The scheduled backfill through a real daemon, timed from the instance's own records."""
    from augassets.profiles import get_profile

    profile = get_profile(profile_name)
    if profile.automation.cron != "* * * * *":
        raise SystemExit(
            f"daemon: profile {profile_name}'s backfill cron is {profile.automation.cron!r}; use a profile that "
            f"ticks every minute (smoke)"
        )
    env = {
        **os.environ,
        "AUGASSETS_PROFILE": profile_name,
        "AUGASSETS_HOME": str(home),
        "DAGSTER_HOME": str(home / profile_name / "dagster"),
    }
    if not (home / profile_name / "store" / "tables" / "results_table").exists():
        subprocess.run(
            [str(Path(sys.executable).with_name("augassets")), "benchmark"],
            env={**env, "DAGSTER_HOME": ""},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    import dagster as dg

    instance = dg.DagsterInstance.get()
    report, table = dg.AssetKey("duplicate_report"), dg.AssetKey("results_table")
    instance.wipe_assets([report])
    table_before = instance.get_latest_materialization_event(table).timestamp
    workspace = ["-w", str(REPO / "workspace.yaml")]
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "dagster"), "sensor", "start", "scheduled_backfill", *workspace],
        env=env,
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.time()
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", *workspace],
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def wait(predicate, timeout=600):
        deadline = time.time() + timeout
        while not (value := predicate()):
            if time.time() > deadline or daemon.poll() is not None:
                raise SystemExit("daemon: gave up waiting (see the instance's runs in the UI)")
            time.sleep(1)
        return value

    try:
        backfill = wait(lambda: instance.get_backfills())[0]
        done = wait(
            lambda: (b := instance.get_backfill(backfill.backfill_id)).status.value.startswith("COMPLETED") and b
        )
        done_at = time.time()
        if done.status.value != "COMPLETED_SUCCESS":
            raise SystemExit(f"daemon: backfill {done.backfill_id} ended {done.status.value}")
        wait(lambda: instance.get_latest_materialization_event(table).timestamp > table_before)
        table_at = time.time()
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        records = [instance.get_run_record_by_id(run.run_id) for run in runs]
        wall = sum(r.end_time - r.start_time for r in records)
        steps = sum(
            (s.end_time or 0) - (s.start_time or 0) for run in runs for s in instance.get_run_step_stats(run.run_id)
        )
        before = (len(instance.get_runs()), len(instance.get_backfills()))
        time.sleep(60 - time.time() % 60 + 3 * profile.automation.interval_s + 5)
        after = (len(instance.get_runs()), len(instance.get_backfills()))
    finally:
        os.killpg(daemon.pid, 15)
        daemon.wait(timeout=60)
    return [
        (
            f"daemon ({profile_name}): start to the cron tick's backfill",
            f"{backfill.backfill_timestamp - started:.1f} s",
        ),
        (
            "  backfill created to completed (as the backfill daemon saw it)",
            f"{done_at - backfill.backfill_timestamp:.1f} s",
        ),
        (
            "  its runs: run process started to ended / inside asset steps",
            f"{len(runs)} runs, {wall:.1f} s / {steps:.1f} s",
        ),
        ("  backfill completed to the results table rematerialized", f"{table_at - done_at:.1f} s"),
        (
            "  runs and backfills requested by the next tick",
            f"{after[0] - before[0]} runs, {after[1] - before[1]} backfills",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "which",
        nargs="*",
        default=["all"],
        choices=[
            "main",
            "classifier",
            "threads",
            "layout",
            "foundation",
            "duplicates",
            "phash",
            "generation",
            "store",
            "daemon",
            "all",
        ],
    )
    parser.add_argument("--profile", default="mini")
    args = parser.parse_args()
    rows = []
    chosen = set(args.which)
    if "all" in chosen:
        chosen = {"main", "classifier", "duplicates", "phash", "foundation", "generation", "store"}
    if "main" in chosen:
        home = Path(tempfile.mkdtemp(prefix="augassets-bench-"))
        rows += bench_main(args.profile, home)
        os.environ["AUGASSETS_HOME"] = str(home)  # the classifier benchmark reuses these splits
    if "classifier" in chosen:
        rows += bench_classifier(args.profile)
    if "threads" in chosen:
        rows += bench_threads(args.profile)
    if "layout" in chosen:
        rows += bench_layout(args.profile)
    if "duplicates" in chosen:
        rows += bench_duplicates()
    if "phash" in chosen:
        rows += bench_phash()
    if "foundation" in chosen:
        rows += bench_foundation(args.profile, Path(os.environ.get("AUGASSETS_HOME", "augassets_home")).resolve())
    if "generation" in chosen:
        rows += bench_generation(args.profile)
    if "store" in chosen:
        rows += bench_store()
    if "daemon" in chosen:
        rows += bench_daemon(args.profile, Path(os.environ.get("AUGASSETS_HOME", "augassets_home")).resolve())
    width = max(len(r[0]) for r in rows)
    print(f"\nmachine: {machine()}\n")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
