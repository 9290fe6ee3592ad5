"""Compute accounting (the paper's §4.4): what each heavy step cost, measured where it runs, and the
cost at the paper's scale extrapolated from the measured per-image cost.

Every step that trains, fine-tunes, generates, embeds or retrieves wraps its work per partition in
:class:`Meter`, which records wall seconds, the device, the images processed and, on CUDA, the peak
GPU memory; the rows go to the ``compute_log`` table (one row per asset partition, replaced when the
partition reruns, so the table holds the cost of the artefacts that exist). A partition resumed after a
kill records only the time of the run that finished it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import polars as pl

COMPUTE_SCHEMA = {
    "asset": pl.Utf8,
    "partition": pl.Utf8,
    "stage": pl.Utf8,
    "method": pl.Utf8,
    "device": pl.Utf8,
    "seconds": pl.Float64,
    "images": pl.Int64,
    "peak_gpu_memory_mb": pl.Float64,
    "finished_at": pl.Float64,
}

# What a stage processes at the paper's scale: ImageNet-10 %, "a 10% sample (126,861 training images)",
# of whose 1,000 classes 10 were excluded because retrieval could not fill them (§3), so 990 classes;
# 390 generated and 130 retrieved images per class (§3.1, §4.4).
PAPER_CLASSES = 990
PAPER_TARGET_IMAGES = 126_861
PAPER_GENERATED_PER_CLASS = 390
PAPER_RETRIEVED_PER_CLASS = 130  # also the augmentation set per class the classifiers train on (100 %)
# The paper's own compute figures (§4.4), per method where it gives them: (hours, "reported" or "derived", note).
# Derived: not stated as such in the paper, worked out here from what it states.
PAPER_HOURS = {
    ("generate", None): (867.0, "reported", "GPU h (T4), 390 images per class, any generating method"),
    ("generate candidates", None): (
        867.0,
        "derived",
        "GPU h (T4) per candidate set: the paper's 867 h per 390 images a class",
    ),
    ("retrieve", "retrieval"): (28.5, "reported", "h on a CPU machine, bottlenecked by downloads"),
    ("fine-tune", "ft_cluster_conditioning"): (244.0, "reported", "GPU h (V100)"),
    ("fine-tune", "ft_conditioning"): (380.0, "reported", "GPU h (V100)"),
    ("fine-tune", "textual_inversion"): (368.0, "reported", "GPU h (V100)"),
    ("fine-tune", "imagic"): (552.0, "reported", "GPU h (V100)"),
    ("fine-tune", "pseudoword_dm"): (720.0, "reported", "GPU h (V100)"),
    ("train classifier", None): (
        144.0,
        "derived",
        "GPU h (T4): the midpoint of the reported 128–160 per classifier run",
    ),
}
# §4.4: "RETRIEVAL was most efficient: 30x faster than the prompt-based DM methods, and 56x faster than
# the best performing and most compute intense PSEUDOWORD+DM": 867 / 28.5 and (720 + 867) / 28.5.
PAPER_SPEEDUPS = {"prompt-based generation": 30.0, "pseudoword_dm": 56.0}


def device_name(device: str) -> str:
    """``cpu``, or the CUDA device's product name (``cuda:0 NVIDIA H200``)."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{device} {torch.cuda.get_device_name(torch.device(device))}"
    return device


@dataclass
class Meter:
    """Times one partition's work: ``with Meter(asset, partition, stage, method, device) as m: …;
    m.images = n`` (or ``m = Meter(…).start()`` … ``m.stop()``); ``m.row()`` is its ``compute_log`` row."""

    asset: str
    partition: str
    stage: str
    method: str | None
    device: str = "cpu"
    images: int = 0
    seconds: float = 0.0
    peak_gpu_memory_mb: float | None = None
    _started: float = field(default=0.0, repr=False)

    def start(self) -> Meter:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
        self._started = time.perf_counter()
        return self

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._started
        if self.device.startswith("cuda"):
            import torch

            self.peak_gpu_memory_mb = torch.cuda.max_memory_allocated(torch.device(self.device)) / 2**20

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def row(self) -> dict:
        return {
            "asset": self.asset,
            "partition": self.partition,
            "stage": self.stage,
            "method": self.method,
            "device": device_name(self.device),
            "seconds": self.seconds,
            "images": int(self.images),
            "peak_gpu_memory_mb": self.peak_gpu_memory_mb,
            "finished_at": time.time(),
        }


def timed(
    asset: str, partition: str, stage: str, method: str | None, device: str, seconds: float, images: float
) -> Meter:
    """A meter for work the caller timed itself (a training loop that reports its own seconds)."""
    return Meter(asset, partition, stage, method, device, images=int(round(images)), seconds=seconds)


def record(db, meters: list[Meter]) -> None:
    """Write the meters' rows to ``compute_log``, each replacing its asset partition's row."""
    for meter in meters:
        db.replace(
            "compute_log",
            pl.DataFrame([meter.row()], schema=COMPUTE_SCHEMA),
            where={"asset": meter.asset, "partition": meter.partition},
        )


@dataclass(frozen=True)
class Scale:
    """A dataset's size as the compute stages see it: classes, target images, images generated and
    retrieved per class (retrieved: also the augmentation set per class a classifier trains on)."""

    classes: int
    target_images: int
    generated_per_class: int
    retrieved_per_class: int


PAPER_SCALE = Scale(PAPER_CLASSES, PAPER_TARGET_IMAGES, PAPER_GENERATED_PER_CLASS, PAPER_RETRIEVED_PER_CLASS)


def paper_scale_images(stage: str, epochs: float | None = None, scale: Scale = PAPER_SCALE) -> float | None:
    """Images a stage processes for one method at ``scale`` (default the paper's), or None where we
    have no basis. ``epochs``: for the training stages, the mean epochs per run; for ``generate
    candidates``, the mean number of distinct candidate image sets per class."""
    if stage == "generate":
        return scale.classes * scale.generated_per_class
    if stage == "generate candidates" and epochs:
        return scale.classes * scale.generated_per_class * epochs
    if stage == "retrieve":
        return scale.classes * scale.retrieved_per_class
    if stage in ("fine-tune", "train classifier", "select checkpoint") and epochs:
        extra = scale.classes * scale.retrieved_per_class if stage != "fine-tune" else 0  # target + a 100 % set
        return (scale.target_images + extra) * epochs
    return None


def compute_summary(log: pl.DataFrame) -> pl.DataFrame:
    """Per stage and method: partitions, seconds, images and images/s, measured; seconds per image."""
    return (
        log.group_by("stage", "method", "device")
        .agg(
            pl.len().alias("partitions"),
            pl.col("seconds").sum(),
            pl.col("images").sum(),
            pl.col("peak_gpu_memory_mb").max(),
        )
        .with_columns(
            pl.when(pl.col("seconds") > 0).then(pl.col("images") / pl.col("seconds")).alias("images_per_second"),
            pl.when(pl.col("images") > 0).then(pl.col("seconds") / pl.col("images")).alias("seconds_per_image"),
        )
        .sort("stage", "method", nulls_last=True)
    )


def extrapolate(summary: pl.DataFrame, epochs: dict[tuple[str, str], float], own: Scale | None = None) -> pl.DataFrame:
    """The measured per-image cost times the images each stage processes at the paper's scale, in
    hours on the measuring device, beside the paper's reported hours where it gives them; with
    ``own`` (the profile's own dataset: its classes, target, generated and retrieved counts), the same
    at that scale too (``own_scale_images``, ``own_hours``). ``epochs``: (stage, method) → mean epochs
    per run for the training stages (their image counts scale with it), mean candidate image sets per
    class for ``generate candidates``."""
    rows = []
    for row in summary.iter_rows(named=True):
        ran = epochs.get((row["stage"], row["method"]))
        images = paper_scale_images(row["stage"], ran)
        own_images = None if own is None else paper_scale_images(row["stage"], ran, own)
        per_image = row["seconds_per_image"]
        hours = None if images is None or per_image is None else images * per_image / 3600
        paper = PAPER_HOURS.get((row["stage"], row["method"])) or PAPER_HOURS.get((row["stage"], None))
        rows.append(
            {
                "stage": row["stage"],
                "method": row["method"],
                "device": row["device"],
                "measured_seconds_per_image": row["seconds_per_image"],
                "paper_scale_images": images,
                "extrapolated_hours": hours,
                "paper_hours": paper[0] if paper else None,
                "paper_hours_kind": paper[1] if paper else None,
                "paper_note": paper[2] if paper else None,
                "own_scale_images": own_images,
                "own_hours": None if own_images is None or per_image is None else own_images * per_image / 3600,
            }
        )
    return pl.DataFrame(rows, schema=EXTRAPOLATION_SCHEMA)


EXTRAPOLATION_SCHEMA = {
    "stage": pl.Utf8,
    "method": pl.Utf8,
    "device": pl.Utf8,
    "measured_seconds_per_image": pl.Float64,
    "paper_scale_images": pl.Float64,
    "extrapolated_hours": pl.Float64,
    "paper_hours": pl.Float64,
    "paper_hours_kind": pl.Utf8,
    "paper_note": pl.Utf8,
    "own_scale_images": pl.Float64,  # the same stage at the profile's own dataset's size
    "own_hours": pl.Float64,
}


def speedups(extrapolation: pl.DataFrame, prompt_methods: list[str]) -> pl.DataFrame:
    """Retrieval's speed-up over generation, the paper's §4.4 ratios beside ours at the paper's scale: the
    prompt-based methods' generation hours ÷ retrieval's retrieval hours (the paper's 30×: 867 / 28.5), and
    pseudoword_dm's fine-tuning + generation hours ÷ retrieval's (56×: (720 + 867) / 28.5). Ours: the
    extrapolated hours of the measured stages (on this machine's devices); None where a stage was not measured.
    Generation is one set of 390 images a class at the method's measured cost per image (a personalized
    method generates its images as checkpoint candidates: that stage's cost per image)."""
    rows = {(r["stage"], r["method"]): r for r in extrapolation.iter_rows(named=True)}
    retrieve = (rows.get(("retrieve", "retrieval")) or {}).get("extrapolated_hours")

    def one_set(method: str) -> float | None:
        for stage in ("generate", "generate candidates"):
            per_image = (rows.get((stage, method)) or {}).get("measured_seconds_per_image")
            if per_image is not None:
                return per_image * PAPER_CLASSES * PAPER_GENERATED_PER_CLASS / 3600
        return None

    prompt = [hours for m in prompt_methods if (hours := one_set(m)) is not None]
    prompt_hours = sum(prompt) / len(prompt) if prompt else None
    generate_9, finetune_9 = (
        one_set("pseudoword_dm"),
        (rows.get(("fine-tune", "pseudoword_dm")) or {}).get("extrapolated_hours"),
    )
    pseudoword_hours = generate_9 + finetune_9 if generate_9 is not None and finetune_9 is not None else None
    rows = []
    for name, numerator, what in (
        ("prompt-based generation", prompt_hours, "generation of the prompt-based methods (mean) ÷ retrieval"),
        ("pseudoword_dm", pseudoword_hours, "⑨'s fine-tuning + generation ÷ retrieval"),
    ):
        ours = numerator / retrieve if numerator is not None and retrieve else None
        rows.append({"comparison": name, "ratio": what, "paper": PAPER_SPEEDUPS[name], "measured": ours})
    return pl.DataFrame(
        rows, schema={"comparison": pl.Utf8, "ratio": pl.Utf8, "paper": pl.Float64, "measured": pl.Float64}
    )


# The stages that make a method's extra images (what a point of accuracy costs beyond the baseline); the
# classifiers that score them are shown apart, and the scaling analysis's own steps are left out.
AUGMENTATION_STAGES = ("fine-tune", "generate candidates", "select checkpoint", "generate", "retrieve")
COST_SCHEMA = {
    "method": pl.Utf8,
    "gain": pl.Float64,  # top-1 over real_p (fraction)
    "gain_ci95": pl.Float64,
    "augmentation_seconds": pl.Float64,  # measured: making the method's extra images
    "classifier_seconds": pl.Float64,  # measured: training its classifiers, shown apart
    "seconds_per_point": pl.Float64,  # augmentation seconds per percentage point of gain (gains > 0)
    "paper_gain": pl.Float64,
    "paper_hours": pl.Float64,  # the paper's §4.4 hours for the same stages (fine-tuning + generation, retrieval)
    "paper_hours_per_point": pl.Float64,
}


def cost_of_accuracy(results: pl.DataFrame, log: pl.DataFrame) -> pl.DataFrame:
    """What a point of accuracy costs, per method: its gain over real_p (with its 95 % interval) beside
    the measured seconds of the steps that made its extra images (fine-tuning, candidates and their
    selection, generation or retrieval; the main table's steps, not the scaling analysis's), the
    seconds per percentage point, and the paper's hours for the same stages with its gain (§4.4: the
    paper's "30× cheaper" made a price per point). ``results``: the results table; ``log``: compute_log."""
    main = log.filter(~pl.col("asset").str.starts_with("scaling"))
    seconds = {
        (stage, method): total
        for stage, method, total in main.group_by("stage", "method").agg(pl.col("seconds").sum()).iter_rows()
    }
    rows = []
    for row in results.iter_rows(named=True):
        method = row["method"]
        if method == "real_p" or row["gain"] is None:
            continue
        making = sum(seconds.get((stage, method), 0.0) for stage in AUGMENTATION_STAGES)
        paper_hours = None
        if method == "retrieval":
            paper_hours = PAPER_HOURS[("retrieve", "retrieval")][0]
        elif ("generate", method) in seconds or ("generate candidates", method) in seconds:
            tuned = PAPER_HOURS.get(("fine-tune", method))
            paper_hours = PAPER_HOURS[("generate", None)][0] + (tuned[0] if tuned else 0.0)
        paper_gain = row.get("paper_gain")
        rows.append(
            {
                "method": method,
                "gain": row["gain"],
                "gain_ci95": row["gain_ci95"],
                "augmentation_seconds": making,
                "classifier_seconds": seconds.get(("train classifier", method), 0.0),
                "seconds_per_point": making / (100 * row["gain"]) if row["gain"] > 0 and making else None,
                "paper_gain": paper_gain,
                "paper_hours": paper_hours,
                "paper_hours_per_point": paper_hours / (100 * paper_gain)
                if paper_hours is not None and paper_gain
                else None,
            }
        )
    return pl.DataFrame(rows, schema=COST_SCHEMA)
