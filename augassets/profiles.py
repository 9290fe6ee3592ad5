"""Every number of the study, in one place, per profile.

Why this module is long: it is the study's settings — one documented dataclass per stage and the
profiles built from them — kept together so that a reader finds every number in one file.

A profile says which dataset to use, how to subsample it, how to train the classifier and which methods
to run. Select one with ``AUGASSETS_PROFILE`` (default ``mini``). Paths to real data come from
environment variables, so the same profile runs on any machine:

=============================  ==========================================================
``AUGASSETS_HOME``             all state: Parquet tables, image store, models, reports
                               (default ``./augassets_home``)
``AUGASSETS_FASHION_MNIST_DIR`` Fashion-MNIST IDX files (default
                               ``/usr/share/datasets/fashion-mnist``, Debian
                               ``dataset-fashion-mnist``)
``AUGASSETS_IMAGENET_DIR``     ILSVRC2012 as class folders: ``train/<wnid>/*.JPEG`` and
                               ``val/<wnid>/*.JPEG``
``AUGASSETS_CALTECH256_DIR``   ``256_ObjectCategories`` (folders ``001.ak47`` …)
``AUGASSETS_WORDNET_DIR``      WordNet 3.0 dict folder (default ``/usr/share/wordnet``)
``AUGASSETS_STORE_URL``        an fsspec URL (``s3://bucket/prefix`` …) for the image store;
                               the local store folder becomes its working copy
``AUGASSETS_METHODS``          comma-separated method keys: run exactly these instead of the
                               profile's ``methods`` (any registered, implemented method; same
                               home, so results of earlier method sets stay in the tables)
``AUGASSETS_CLUSTERS``         ⑥'s k-means clusters per class instead of the profile's
                               ``personalization.clusters`` (the paper's ablation: 1, 5, 10, 15)
``AUGASSETS_WORLD``            ``shipped`` (default where the profile names a shipped world):
                               install the mini world's trained models from the package;
                               ``train``: train them here (``augassets foundation --rebuild``)
``AUGASSETS_POOL_SEED``        another draw of the mini web pool (``PoolSpec.seed``); the world is
                               then trained here (a shipped world is the draw it was trained on)
``AUGASSETS_STUDY``            a study file (TOML) instead of a built-in profile (``--study``;
                               :func:`load_study`); the variables above still override it
=============================  ==========================================================
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .core.extensions import EXTENSIONS
from .core.methods import METHODS

PROFILE_ENV = "AUGASSETS_PROFILE"
METHODS_ENV = "AUGASSETS_METHODS"
CLUSTERS_ENV = "AUGASSETS_CLUSTERS"
SCALING_ENV = "AUGASSETS_SCALING_RATIOS"  # e.g. 1,2,5,10: the scaling analysis on any profile (ScalingSpec.ratios)
HOME_ENV = "AUGASSETS_HOME"
WORKERS_ENV = "AUGASSETS_WORKERS"  # worker processes of the headless command (Profile.workers)
WORLD_ENV = (
    "AUGASSETS_WORLD"  # shipped | train: install the shipped world's models or train them (MiniWorldSpec.shipped)
)
POOL_SEED_ENV = "AUGASSETS_POOL_SEED"  # another draw of the mini web pool; trains its world here
STORE_URL_ENV = "AUGASSETS_STORE_URL"  # an fsspec URL for the image store; unset: the local folder
STUDY_ENV = "AUGASSETS_STUDY"  # a study file (TOML) instead of a built-in profile
DEVICE_ENV = "AUGASSETS_DEVICE"  # overrides the profile's device (e.g. cpu, to try a cuda profile without a GPU)
# The external foundation's overrides: environment variable → Profile field.
WEIGHTS_ENVS = {
    "AUGASSETS_SD_WEIGHTS": "sd_weights",
    "AUGASSETS_CLIP_WEIGHTS": "clip_weights",
    "AUGASSETS_KNN_INDEX_DIR": "knn_index_folder",
    "AUGASSETS_KNN_URL": "knn_url",
    "AUGASSETS_KNN_INDICE": "knn_indice_name",
}
DEFAULT_PROFILE = "mini"


def _repr_leaving_out_unset(spec: object, added_later: tuple[str, ...]) -> str:
    """The dataclass repr, but fields in ``added_later`` appear only when they differ from their default.
    Code versions hash settings reprs (``versions.code_version``), and a shipped world records the versions
    it was trained at: a field added since then, left at its default, must leave those versions as they were."""
    shown = [f for f in fields(spec) if f.repr and not (f.name in added_later and getattr(spec, f.name) == f.default)]
    return f"{type(spec).__qualname__}({', '.join(f'{f.name}={getattr(spec, f.name)!r}' for f in shown)})"


@dataclass(frozen=True)
class TargetDesign:
    """How the mini world stages Fashion-MNIST garments as target-domain photos (``core.target_domain``):
    each garment rescaled by a factor in ``scale`` of the ``image_size`` px frame, rotated by up to
    ± ``rotation`` degrees, moved by up to ± ``shift`` of the frame, lit at a tone in ``garment_tone``
    and tinted by up to ``garment_tint`` (0: gray), in front of a smooth studio backdrop (brightness in
    ``backdrop_level``, colour up to ``backdrop_tint``, a lit gradient of strength ``backdrop_gradient``),
    behind up to ``occluders`` shapes of at most ``occluder_size`` of the frame, with Gaussian sensor
    noise of standard deviation ``noise``. ``name`` identifies the design in tables and benchmarks."""

    name: str
    image_size: int = 28
    scale: tuple[float, float] = (1.0, 1.0)
    rotation: float = 0.0
    shift: float = 0.0
    garment_tone: tuple[float, float] = (1.0, 1.0)
    garment_tint: float = 0.0
    backdrop_level: tuple[float, float] = (0.0, 0.0)
    backdrop_tint: float = 0.0
    backdrop_gradient: float = 0.0
    occluders: int = 0
    occluder_size: float = 0.4
    noise: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class DatasetSpec:
    """Where the images come from and how classes are named.

    kind: ``fashion_mnist`` (IDX files) or ``image_folder`` (``<root>/<train_dir>/<class>/<image>``).
    class_list: ``fashion_mnist`` / ``imagenet`` (wnids from the packaged tables), ``caltech256``
    (folder names; keys ``c001``…) or ``folders`` (the wnid-named class folders of any ImageFolder).
    ``test_dir`` empty means no official test split: val and test are
    carved from train (``holdout_fraction`` each), as the paper does for Caltech256.
    """

    kind: str
    class_list: str
    root_env: str
    default_root: str
    install_hint: str
    train_dir: str = "train"
    test_dir: str = "val"
    holdout_fraction: float = 0.0
    target: TargetDesign | None = None  # fashion_mnist only: how garments are staged (None: as shipped, 28 px gray)
    # Where the data lies on this machine: ``$root_env`` as read by :func:`located` (empty: ``default_root``).
    # A machine's path, not a setting of the study: left out of the repr, so of every code version.
    root_dir: str = field(default="", repr=False, compare=False)

    @property
    def root(self) -> Path:
        return Path(self.root_dir or self.default_root)

    def located(self, environ=os.environ) -> DatasetSpec:
        """This dataset at the root ``environ[root_env]`` names (unset: ``default_root``)."""
        return replace(self, root_dir=environ.get(self.root_env, ""))

    @property
    def class_root(self) -> Path:
        """The folder whose subfolders are the classes."""
        return self.root / self.train_dir if self.train_dir else self.root


@dataclass(frozen=True)
class SplitSpec:
    """The paper's subsampling: a p% class-imbalance-preserving target set, a disjoint val set of the
    same size, the official test split, and a disjoint extra real set of the target's size (``real_2p``).

    ``class_rate_spread`` makes a balanced dataset imbalanced on purpose: class c keeps a fraction
    ``train_fraction * u_c`` with ``u_c`` drawn uniformly from ``[1 - spread, 1]`` (seeded), so class
    counts differ as ImageNet's 74–130 do. ``val_fraction`` sizes the val set when it should differ from the
    target (full ImageNet: 90% / 10%).
    ``max_test_per_class`` caps the test split (0: no cap).
    ``non_rgb`` says what to do with CMYK/RGBA/grayscale files in class folders: ``skip`` or ``convert``.
    ``real_extra``: draw the disjoint extra real subsample that ``real_2p`` trains on. Off where the
    target already takes all the training data (full ImageNet, Caltech256's 80%): there is no ``real_2p``.
    """

    train_fraction: float
    val_fraction: float = 0.0  # 0: the same as train_fraction (a val set of the target's size)
    class_rate_spread: float = 0.0
    max_test_per_class: int = 0
    seed: int = 0
    non_rgb: str = "skip"
    real_extra: bool = True


@dataclass(frozen=True)
class ClassifierSpec:
    """The paper's classifier protocol (section 3): RandomResizedCrop + flip, SGD, lr ÷10 after
    ``plateau_patience`` epochs without val improvement, stop after ``early_stop_patience``, at most
    ``max_epochs``; the best-val checkpoint is scored on test.

    arch: ``resnet_small`` (a CIFAR-style ResNet for 28–32 px) or ``resnet50`` (torchvision).
    ``min_steps_per_epoch``: a set smaller than ``min_steps_per_epoch × batch_size`` images is passed
    over several times per epoch (fresh permutations), so the patience counts a comparable amount of
    training for a target of 100 images and one of 200; 0 (the paper: ImageNet-10% is ~500 steps an
    epoch) leaves epochs as single passes.
    ``preload_max_images``: sets up to this size are decoded once and kept in memory; larger ones
    are streamed from disk by ``num_workers`` DataLoader workers.
    ``ema_decay``: 0 (the paper) validates and keeps the trained weights themselves; above 0, an
    exponential moving average of the weights and BatchNorm statistics, updated after every step with
    this decay, is what is validated each epoch, kept as the best checkpoint and scored on test.
    """

    arch: str
    image_size: int
    batch_size: int
    lr: float
    max_epochs: int
    plateau_patience: int
    early_stop_patience: int
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop_scale: tuple[float, float] = (0.08, 1.0)
    replicates: int = 5
    width: int = 16
    min_steps_per_epoch: int = 0
    num_workers: int = 0
    preload_max_images: int = 200_000
    device: str = "cpu"
    ema_decay: float = 0.0

    def __repr__(self) -> str:
        return _repr_leaving_out_unset(self, added_later=("ema_decay",))


@dataclass(frozen=True)
class PoolSpec:
    """The mini web pool (the mini world's LAION), made from Fashion-MNIST training images no split uses.

    ``per_class`` class images per class, ``distractors`` images of no class, and light edits of
    ``planted_test_duplicates`` test and ``planted_val_duplicates`` val images (ground truth kept).
    Caption noise: ``missing_class_word_rate`` name no class, ``wrong_class_word_rate`` name another
    class, ``hypernym_rate`` of the rest use the hypernym instead of a lemma. ``nsfw_rate``: share of
    images carrying the planted NSFW marker. The planted duplicates are the test-set copies a crawl may
    hold, found (or not) by the leak analysis. ``background_strength`` scales the brightness of the
    textured backdrops (1: as bright as the garment's colours can be; lower: closer to the target's
    black) — the lever for the domain transfer ratio. ``web_scale``, ``web_rotation`` (degrees) and
    ``web_shift`` (pixels): the range of the web transform's geometry (web photos vary in pose too);
    ``web_colour``: the range of each RGB channel of a garment's colour (a higher floor: milder colours).

    ``judge_per_class``: (train, val, held-out) web-domain images per class made like the pool's class
    images from further unused training images, but kept out of the pool (no index, CLIP or UNet sees
    them): the labelled data of the unbiased class-fidelity judge.
    """

    per_class: int
    distractors: int
    planted_test_duplicates: int
    planted_val_duplicates: int
    image_size: int = 32
    missing_class_word_rate: float = 0.10
    wrong_class_word_rate: float = 0.08
    hypernym_rate: float = 0.15
    nsfw_rate: float = 0.03
    background_strength: float = 1.0
    web_scale: tuple[float, float] = (0.85, 1.1)
    web_rotation: float = 15.0
    web_shift: int = 2
    web_colour: tuple[float, float] = (0.1, 1.0)
    judge_per_class: tuple[int, int, int] = (300, 50, 100)
    seed: int = 0


@dataclass(frozen=True)
class ClipSpec:
    """The mini CLIP: a transformers ``CLIPModel`` with the real 49,408-token BPE vocabulary, trained
    contrastively on the pool's image–caption pairs."""

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    patch_size: int = 8
    projection_dim: int = 64
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    max_text_tokens: int = 32  # captions are truncated to this many tokens in training (the model keeps 77 positions)


@dataclass(frozen=True)
class DiffusionSpec:
    """The mini Stable Diffusion: an ``AutoencoderKL`` (image_size → image_size/4 latents) and a
    ``UNet2DConditionModel`` conditioned on the mini CLIP's frozen text tower, trained on pool images
    with aesthetic ≥ ``train_aesthetic_min`` (SD v1.4 was trained on LAION-Aesthetics 5+).

    ``unet_training()``: the settings the UNet's weights depend on (the sampler's ``scheduler``,
    ``steps``, ``guidance_scale`` and ``samples_per_class`` do not)."""

    vae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    vae_epochs: int = 3
    vae_batch_size: int = 128
    vae_lr: float = 1e-3
    unet_channels: tuple[int, ...] = (64, 128)
    unet_epochs: int = 12
    unet_batch_size: int = 128
    unet_lr: float = 5e-4  # the peak of a cosine schedule with 5 % warm-up
    unet_ema_decay: float = 0.999  # the largest decay of the weights' moving average (0: none)
    caption_dropout: float = 0.1  # empty captions in training, for classifier-free guidance
    train_aesthetic_min: float = 5.0
    scheduler: str = "ddim"
    steps: int = 25
    guidance_scale: float = 4.0
    samples_per_class: int = 8

    def unet_training(self) -> tuple:
        return (
            self.vae_channels,
            self.latent_channels,
            self.unet_channels,
            self.unet_epochs,
            self.unet_batch_size,
            self.unet_lr,
            self.unet_ema_decay,
            self.caption_dropout,
            self.train_aesthetic_min,
        )


@dataclass(frozen=True)
class MiniWorldSpec:
    """The mini world's foundation. ``judge``: the class-fidelity judge's own classifier (architecture,
    input size, schedule), so that the protocol's classifier can change without making a shipped judge
    stale; None: the profile's classifier with ``judge_patience``, its (lr-drop, early-stop) patience —
    shorter, as an epoch over the judge's ~6,000 images is 20× the evidence of an epoch over the target.
    ``Profile.judge_classifier`` is the spec in force.

    ``shipped``: the name of a world shipped with the package (``augassets/world/<name>``, ``core.world``)
    whose trained models (CLIP, VAE, UNet, the judge) are installed instead of trained, checksums and
    code versions checked; empty, or ``AUGASSETS_WORLD=train`` (what ``augassets foundation --rebuild``
    sets), trains them here."""

    pool: PoolSpec
    clip: ClipSpec = field(default_factory=ClipSpec)
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    judge_patience: tuple[int, int] = (5, 10)
    shipped: str = ""
    judge: ClassifierSpec | None = None

    def __repr__(self) -> str:
        return _repr_leaving_out_unset(self, added_later=("judge",))


@dataclass(frozen=True)
class RetrievalSpec:
    """Retrieval augmentation: n = ``ratio`` × the target's largest per-class count per class (above 1
    for the scaling analysis); pool items need aesthetic ≥ ``min_aesthetic`` (a metadata filter);
    results whose image embeddings have inner product ≥ ``dedup_threshold`` are near-duplicates
    (clip-retrieval's 0.94, calibrated for a trained CLIP).

    The filters read the hits' metadata columns ``aesthetic_column`` (a score, the mini pool's
    ``aesthetic``; LAION-Aesthetics' predictor score where a LAION index carries it) and ``nsfw_column``
    (a flag, or a probability such as LAION's ``punsafe``: NSFW above ``nsfw_threshold``). A KNN service
    returns only the columns it is told to: ``clip-retrieval back`` its ``columns_to_return`` (by default
    ``url`` and ``caption``), so add the two there. When no hit carries a column its filter is skipped,
    said in one line naming the setting, never by rejecting every hit."""

    ratio: float = 1.0
    min_aesthetic: float = 5.0
    dedup_threshold: float = 0.94
    aesthetic_column: str = "aesthetic"
    nsfw_column: str = "nsfw"
    nsfw_threshold: float = 0.5

    def __repr__(self) -> str:
        return _repr_leaving_out_unset(self, added_later=("aesthetic_column", "nsfw_column", "nsfw_threshold"))


@dataclass(frozen=True)
class GenerationSpec:
    """Generation protocol (paper §3): ``factor`` × the target's largest per-class count images per
    class (3×: 390 for ImageNet-10%), or ``per_class`` images where it is set (full ImageNet: the
    paper's ten times the 10 % setting's count, 3,900), resampled into each replicate's set; an image
    the safety checker flags is regenerated with a new seed, at most ``max_attempts`` times. Boomerang
    noises target images to ``boomerang_strength`` and denoises them without a prompt (no guidance)."""

    factor: int = 3
    max_attempts: int = 5
    seed: int = 0
    boomerang_strength: float = 0.5  # Boomerang: how far each target image is noised before denoising
    per_class: int = 0  # 0: factor × the target's largest class

    def __repr__(self) -> str:
        return _repr_leaving_out_unset(self, added_later=("per_class",))


SHORT_CLASS_RULES = ("exclude", "train_with_what_there_is")


@dataclass(frozen=True)
class ScalingSpec:
    """The scaling analysis (paper Fig. 5B): for each ratio r, classifiers trained on the target plus
    ⌈r × the class's target count⌉ of a method's images per class (r = 1: as many as the target has,
    the main table's setting; the paper: 100 % … 1000 %). Empty ``ratios``: off. ``methods`` (empty:
    the paper's, pseudo-word + DM ⑨ and retrieval, or the simple prompt and retrieval where the profile
    runs no ⑨): retrieval (its most similar images first; k grows until the largest ratio is filled or
    the pool runs out), prompt methods (a pool of ``GenerationSpec.factor`` × the largest need,
    resampled per replicate) and personalized methods (the same, generated from the checkpoint
    checkpoint_selection chose for the class); Boomerang is not scaled. ``replicates``: classifiers per
    cell (0: the classifier's replicates).

    ``short_classes``: what a cell does with the classes whose images cannot fill its ratio (retrieval's
    pool ran out). ``exclude`` (the paper's Fig. 5B): they leave that cell's training and evaluation,
    and the cell's accuracy over every class is bounded by counting their test images all wrong
    (worst case) or all right (best case); ``train_with_what_there_is``: they train with the images
    they have and are evaluated as usual."""

    ratios: tuple[float, ...] = ()
    methods: tuple[str, ...] = ()
    replicates: int = 0
    short_classes: str = "exclude"

    def __post_init__(self):
        if self.short_classes not in SHORT_CLASS_RULES:
            raise ValueError(f"scaling.short_classes={self.short_classes!r}: one of {', '.join(SHORT_CLASS_RULES)}")


@dataclass(frozen=True)
class PersonalizationSpec:
    """The personalized methods (paper §3.1, "Fine-tuning the diffusion model"): ⑤ fine-tuned
    conditioning, ⑥ cluster conditioning and ⑧ textual inversion, each trained per class on the
    class's target images with SD's own noise-prediction loss, the diffusion model frozen; ⑦
    Imagic-style (⑤'s conditionings) and ⑨ pseudo-word + DM (⑧'s words) trained together with the
    UNet, one run over all classes' target images (the UNet is shared), the UNet at ``unet_lr``.

    Training stops when the val loss (on the class's val images, ``val_draws`` fixed noise draws per
    image) has not improved for ``patience`` epochs, at most ``max_epochs`` (the paper: 40). Learning
    rates are given for ``reference_batch_size`` and scaled by √(``batch_size`` / reference), the
    paper's rule for larger batches (§3.1: "square-root scaling the learning rate to ensure constant
    gradient variance"). Where each default comes from:

    - ``word_lr`` (⑧, ⑨'s words) 5e-3: textual inversion's own ``base_learning_rate``
      (rinongal/textual_inversion, ``configs/stable-diffusion/v1-finetune.yaml``, batch 2), which its
      ``main.py`` scales *linearly* by GPUs × batch × accumulation; the paper, and this code, by √.
    - ``joint_word_lr`` (⑨'s words; 0: ``word_lr``): ⑨ trains every class's word in one run, and the
      optimizer moves each word at every step of it (Adam's momentum moves a word in steps without its
      class too), about as many steps per epoch as there are batches of all classes' images, against a
      per-class run's batches of one class's. A rate chosen for ⑧'s per-class runs can so carry ⑨'s
      words far outside the text encoder's embedding range within an epoch, where the words stop naming
      their classes (mini: BENCHMARKS.md, "⑨'s words"); a profile sets it where that happens.
    - ``unet_lr`` (the UNet of ⑦ ⑨) 5e-6: diffusers' DreamBooth example (``train_dreambooth.py``,
      ``--learning_rate``) for SD's UNet; Imagic's own UNet stage in diffusers' community pipeline uses 2e-6.
    - ``conditioning_lr`` (⑤ ⑥, ⑦'s conditionings) 1e-2: no cited code's value. Imagic optimizes its
      text embedding at 1e-3 (diffusers' community Imagic pipeline) for 500 steps on one image; this
      project's default is ten times that for class-sized sets, to be checked per profile with the grid.

    The grid: ``python -m benchmarks.personalization --method <m> --rates <grid>`` on any profile's
    home fine-tunes at each rate with early stopping off and prints the val-loss curves; the rate is
    chosen as the one whose val loss reaches its plateau well inside ``max_epochs`` without rising (a
    property of the fine-tuning, never of which method wins). The mini profiles' rates were chosen so
    (BENCHMARKS.md). Checkpoint candidates: best train loss, best val loss and epochs 1 …
    ``early_epochs``; ⑦ instead keeps epochs 1 … ``imagic_early_epochs`` only (the paper's 8, after which
    its images degrade), and does not stop before them (``max_epochs`` below it is an error naming both);
    each candidate's images train one classifier, and the best val accuracy chooses the checkpoint
    whose images the method uses.

    ⑥: ``clusters`` k-means clusters (the paper's k = 5) of the class's target images embedded by
    ``cluster_embedder`` (``core/embedders.py``): ``inception_v3``, the paper's (torchvision's ImageNet
    weights from the local torch hub cache), ``clip`` (the profile's CLIP image tower: the mini world
    keeps its own, an ImageNet Inception knowing nothing of its world), or ``inception_v3_untrained`` (the
    architecture with random weights, for tests); generation draws clusters in proportion to their sizes.

    ``latents_in_memory_gib``: ⑦ ⑨ train on every class's images at once, from VAE latents encoded
    once; above this size they are memory-mapped from files in the run's folder instead of held in
    memory (full ImageNet: about 150 GiB), and deleted after the run. Where they live changes no
    number, so it is left out of the code versions.
    """

    max_epochs: int = 40
    patience: int = 3
    batch_size: int = 8
    reference_batch_size: int = 8
    conditioning_lr: float = 1e-2
    word_lr: float = 5e-3
    joint_word_lr: float = 0.0
    unet_lr: float = 5e-6
    val_draws: int = 8
    early_epochs: int = 3
    imagic_early_epochs: int = 8
    clusters: int = 5
    seed: int = 0
    cluster_embedder: str = "inception_v3"
    latents_in_memory_gib: float = field(default=8.0, repr=False)

    def __repr__(self) -> str:
        return _repr_leaving_out_unset(self, added_later=("joint_word_lr",))

    def words_lr(self, joint: bool) -> float:
        """The pseudo-words' rate: ⑧'s per-class runs (``joint`` False) and ⑨'s joint run."""
        return self.joint_word_lr if joint and self.joint_word_lr else self.word_lr


@dataclass(frozen=True)
class DuplicateSpec:
    """pHash duplicate analysis: pairs closer than ``hamming_threshold`` bits (the paper: 10 of 64) are
    near-duplicates; the summary's check fails above ``max_test_leak_rate`` of augmentation images.
    ``hash_size``: pHash side (h² bits; the paper's 8 → 64 bits, as ``imagehash.phash``).

    ``calibrate_on_planted`` (the mini world): the threshold is instead chosen from the pool's planted
    duplicates — the strictest one that finds ``target_recall`` of them — and must reach
    ``min_precision`` there; the curve covers thresholds 1 … ``max_calibration_threshold``.
    ``calibration_copies`` more light edits of test/val images, made the same way but kept out of the
    pool, join the ground truth: the curve gets enough positives while the pool holds test copies at a
    lower rate (a web crawl holds few copies of any benchmark's test set). At 28 px the
    64-bit pHash of two Fashion-MNIST images of a class is often within a few bits (< 10: precision
    0.003 on the planted truth; the best threshold reaching 95 % recall: 0.095), so the mini world hashes
    with ``hash_size`` 16 (256 bits), where the planted duplicates separate from look-alikes.
    """

    hamming_threshold: int = 10
    hash_size: int = 8
    max_test_leak_rate: float = 0.01
    calibrate_on_planted: bool = False
    target_recall: float = 0.95
    min_precision: float = 0.5
    max_calibration_threshold: int = 16
    calibration_copies: int = 0


@dataclass(frozen=True)
class AutomationSpec:
    """What the Dagster daemon does for this profile (the headless command ignores it).

    The assets' automation condition is one notion of stale: missing, code version changed, or an
    upstream updated. ``cron`` (``cron_timezone``) is when the daemon starts new work: at each tick,
    every partition that is missing or whose code version changed is requested, as one backfill;
    what lies downstream (datasets, scores, the report) follows as soon as its upstream is updated,
    without waiting for the next tick. ``backfill_on`` / ``new_classes_on``: whether the
    ``scheduled_backfill`` and ``new_classes`` sensors run by default (both can be started and
    stopped in the UI's Automation page or with ``dagster sensor start|stop``). ``repair_on``: whether
    the ``damaged_outputs`` sensor (rebuilds partitions whose files are missing or changed on disk)
    runs by default. ``interval_s``: how often the daemon evaluates them.
    """

    cron: str = "0 2 * * *"
    cron_timezone: str = "UTC"
    backfill_on: bool = True
    new_classes_on: bool = True
    repair_on: bool = True
    interval_s: int = 30


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    dataset: DatasetSpec
    split: SplitSpec
    classifier: ClassifierSpec
    methods: tuple[str, ...] = ("real_p", "real_2p", "retrieval")
    world: MiniWorldSpec | None = None  # the mini world's foundation; None: external pool, CLIP and SD
    retrieval: RetrievalSpec = field(default_factory=RetrievalSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    duplicates: DuplicateSpec = field(default_factory=DuplicateSpec)
    personalization: PersonalizationSpec = field(default_factory=PersonalizationSpec)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    automation: AutomationSpec = field(default_factory=AutomationSpec)
    # External foundation (used when world is None): Stable Diffusion and CLIP weights (folder or hub
    # id), and the pool's KNN index: a local clip-retrieval index folder, or a clip-retrieval back URL.
    # get_profile reads their overrides from the environment (LOCATION_ENVS).
    sd_weights: str = "CompVis/stable-diffusion-v1-4"
    clip_weights: str = "openai/clip-vit-large-patch14"
    knn_index_folder: str = ""
    knn_url: str = ""
    knn_indice_name: str = "laion5B-L-14"
    max_classes: int = 0  # 0: every class of the class list
    # Which of the paper's reported results the results table sets beside this profile's
    # (augassets/data/paper_results.tsv): imagenet_10pct (Table 1), imagenet_full or caltech256.
    paper_reference: str = "imagenet_10pct"
    torch_threads: int = 0  # 0: leave torch's default
    # CPU threads of a step over partitions (one partition or a range), wherever it runs; 0: torch_threads.
    # A setting of the profile, never derived from the worker count: thread counts change how sums round,
    # so a partition's numbers must not depend on how many processes share the machine.
    partition_threads: int = 0
    # Processes the headless command runs a partitioned group's chunks in at once (runner/workers.py); 1: in its own
    # process. On the CPU the command raises the gpu pool's limit to this count.
    workers: int = 1
    # Images per sampling batch, each a resumable chunk of a partition (0: 64 in the mini world, 16 for real SD).
    # Each image has its own seeded noise, but batched sums round differently at another batch size, so the
    # images' last bits can differ: augmentation_images' code version covers it.
    sample_batch_size: int = 0
    # Where this machine keeps the profile's state and which device it computes on, as get_profile read
    # them from the environment (:func:`located`; empty: the defaults). Not settings of the study: left
    # out of the repr and of comparisons.
    home_root: str = field(default="", repr=False, compare=False)  # $AUGASSETS_HOME (default ./augassets_home)
    store_url: str = field(default="", repr=False, compare=False)  # $AUGASSETS_STORE_URL (default: the home's store)
    device: str = field(default="", repr=False, compare=False)  # $AUGASSETS_DEVICE (default: classifier.device)

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"profile {self.name!r}: workers must be ≥ 1, got {self.workers}")
        if "real_2p" in self.methods and not self.split.real_extra:
            raise ValueError(f"profile {self.name!r}: method real_2p needs split.real_extra (the extra real subsample)")

    @property
    def judge_classifier(self) -> ClassifierSpec:
        """The mini world's class-fidelity judge (``MiniWorldSpec.judge``)."""
        if self.world is None:
            raise ValueError(f"profile {self.name!r} has no mini world, so no fidelity judge")
        if self.world.judge is not None:
            return self.world.judge
        plateau, early_stop = self.world.judge_patience
        return replace(self.classifier, plateau_patience=plateau, early_stop_patience=early_stop)

    @property
    def report_settings(self) -> dict[str, str]:
        """The settings the paper's further figures are keyed by (``data/paper_comparisons.tsv``): ⑥'s clusters."""
        return {"clusters": str(self.personalization.clusters)}

    @property
    def home(self) -> Path:
        """This profile's state: ``$AUGASSETS_HOME/<profile>`` (profiles never share tables)."""
        return Path(self.home_root or "augassets_home").resolve() / self.name

    @property
    def store_root(self) -> str:
        """The image store: ``$AUGASSETS_STORE_URL``, or the home's ``store`` folder."""
        return self.store_url or str(self.home / "store")

    @property
    def compute_device(self) -> str:
        """The device steps compute on: ``$AUGASSETS_DEVICE``, or the classifier's (a cuda profile on a
        machine without a GPU fails in ComputeResource's setup, naming the setting)."""
        return self.device or self.classifier.device

    @property
    def tables(self) -> str:
        """Where the study's tables live: ``tables/`` in the image store (one Parquet file per
        partition; ``augassets.core.warehouse``)."""
        return self.store_root.rstrip("/") + "/tables"

    @property
    def catalog(self) -> Path:
        """``catalog.duckdb``: DuckDB views over the tables, rebuilt after every command."""
        return self.home / "catalog.duckdb"


FASHION_MNIST = DatasetSpec(
    kind="fashion_mnist",
    class_list="fashion_mnist",
    root_env="AUGASSETS_FASHION_MNIST_DIR",
    default_root="/usr/share/datasets/fashion-mnist",
    install_hint="install it with `apt-get install dataset-fashion-mnist` (Debian) or set "
    "AUGASSETS_FASHION_MNIST_DIR to a folder holding the four *-ubyte.gz files",
)

# Candidate target designs of world v2 (``python -m benchmarks.calibration designs`` measures their learning
# curves; BENCHMARKS.md has the table the mini world's design was chosen from). Each adds to the one before.
POSE = TargetDesign(name="pose", scale=(0.6, 1.0), rotation=25, shift=0.12)
STUDIO = replace(
    POSE,
    name="studio",
    garment_tone=(0.7, 1.0),
    garment_tint=0.3,
    backdrop_level=(0.05, 0.3),
    backdrop_tint=0.4,
    backdrop_gradient=0.5,
    noise=0.02,
)
STUDIO_CLUTTER = replace(STUDIO, name="studio_clutter", occluders=2)
TARGET_DESIGNS = {design.name: design for design in (POSE, STUDIO, STUDIO_CLUTTER)}

IMAGENET = DatasetSpec(
    kind="image_folder",
    class_list="imagenet",
    root_env="AUGASSETS_IMAGENET_DIR",
    default_root="/data/imagenet",
    install_hint="set AUGASSETS_IMAGENET_DIR to an ILSVRC2012 folder with train/<wnid>/ and val/<wnid>/",
)

CALTECH256 = DatasetSpec(
    kind="image_folder",
    class_list="caltech256",
    root_env="AUGASSETS_CALTECH256_DIR",
    default_root="/data/256_ObjectCategories",
    install_hint="set AUGASSETS_CALTECH256_DIR to the extracted 256_ObjectCategories folder",
    train_dir="",
    test_dir="",
    holdout_fraction=0.1,
)

IMAGE_FOLDER = DatasetSpec(
    kind="image_folder",
    class_list="folders",
    root_env="AUGASSETS_IMAGEFOLDER_DIR",
    default_root="/data/imagefolder",
    install_hint="set AUGASSETS_IMAGEFOLDER_DIR to a folder with train/<wnid>/ and test/<wnid>/ class folders",
    train_dir="train",
    test_dir="test",
)

SMALL_RESNET = ClassifierSpec(
    arch="resnet_small",
    image_size=28,
    batch_size=32,
    lr=0.05,
    max_epochs=300,  # a cap that early stopping reaches first (benchmarks/calibration.py counts how often)
    # The paper's patience, 10 epochs to the lr drop and 20 to the stop, is 5,000 and 10,000 SGD steps on
    # ImageNet-10% (~500 steps an epoch); here an epoch is 10 steps. At 10/20 runs stopped on early plateaus
    # (retrieval's five spread over 9 points); 20/40 halves most rows' spread (benchmarks/spread.py, BENCHMARKS.md).
    plateau_patience=20,
    early_stop_patience=40,
    crop_scale=(0.35, 1.0),
    width=8,
    min_steps_per_epoch=10,
)

# The mini protocol's classifier: the small ResNet on 20 px crops, six runs a row. At 20 px real_2p − real_p keeps
# its 12–13 points and a classifier costs about 60 % of one at 28 px. With seeds 0–5 every default gain's 95 %
# half-width is under 2 points (④'s 1.88; five runs left it at 2.42, and its ten-run spread puts six runs near 2.4
# on other seeds): `python -m benchmarks.spread --variants size_20 --replicates 10 --half-widths`, BENCHMARKS.md.
MINI_CLASSIFIER = replace(SMALL_RESNET, image_size=20, replicates=6)

# The mini world's class-fidelity judge: the small ResNet at 28 px with a shorter patience, as world v2's judge was
# trained (its code version is the one the shipped world records, so it must not follow MINI_CLASSIFIER).
MINI_JUDGE = replace(SMALL_RESNET, plateau_patience=5, early_stop_patience=10)

RESNET50 = ClassifierSpec(
    arch="resnet50",
    image_size=224,
    batch_size=256,
    lr=0.1,
    max_epochs=270,
    plateau_patience=10,
    early_stop_patience=20,
    num_workers=8,
    preload_max_images=0,
    device="cuda",
)

# Learning rates from the val-loss curves of the mini SD (`python -m benchmarks.personalization`, BENCHMARKS.md):
# at 0.01 (⑤) and 0.005 (⑧, textual inversion's own rate) the val loss is still falling after 12 epochs
# (⑤: after 37); at 0.1 and 0.05 it reaches that level in about five and then stagnates, so early stopping,
# not the cap, ends the runs; at 0.5 (⑤) it never gets below its start. The UNet of ⑦ ⑨ (`--method imagic`, all
# classes, 4 epochs): at 5e-6 the val loss stops falling after epoch 3, at 5e-5 it is lowest and still falling,
# at 5e-4 (the rate the mini UNet was trained at) it rises 10 % above the others.
# The mini world clusters ⑥ on its own CLIP image tower (an ImageNet Inception knows nothing of its world).
# ⑨'s words train in one run over all classes, each moved at every one of its steps: at 0.05 they left the
# embedding range in the first epoch (norm 2.8 against the vocabulary's ≤ 0.51) and no longer named their
# classes; they train at textual inversion's own rate instead (BENCHMARKS.md, "⑨'s words").
MINI_PERSONALIZATION = PersonalizationSpec(
    conditioning_lr=0.1, word_lr=0.05, joint_word_lr=5e-3, unet_lr=5e-5, cluster_embedder="clip"
)

# The mini world's leak detector: a 256-bit pHash with the threshold calibrated on the planted duplicates.
MINI_DUPLICATES = DuplicateSpec(
    calibrate_on_planted=True, hash_size=16, max_calibration_threshold=40, calibration_copies=200
)

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="Tests: 3 Fashion-MNIST classes, about ten images each, 3 epochs, 2 replicates; the scaling "
        "analysis at "
        "100 % and 200 %. Seconds.",
        # Every kind of scaled method: a prompt method, a personalized one (from its chosen checkpoint), retrieval.
        scaling=ScalingSpec(ratios=(1.0, 2.0), methods=("simple_prompt", "pseudoword_dm", "retrieval")),
        dataset=replace(FASHION_MNIST, target=STUDIO),
        split=SplitSpec(train_fraction=0.002, class_rate_spread=0.4, max_test_per_class=40, seed=0),
        # Two replicates, not five: enough for a standard error and for resampled sets to differ, at 40 % of the cost.
        classifier=replace(
            SMALL_RESNET,
            max_epochs=3,
            plateau_patience=1,
            early_stop_patience=2,
            width=4,
            min_steps_per_epoch=0,
            replicates=2,
        ),
        world=MiniWorldSpec(
            pool=PoolSpec(
                per_class=40,
                distractors=20,
                planted_test_duplicates=4,
                planted_val_duplicates=2,
                judge_per_class=(24, 8, 8),
            ),
            clip=ClipSpec(hidden_size=32, layers=1, heads=2, projection_dim=16, epochs=1, batch_size=64),
            diffusion=DiffusionSpec(
                vae_channels=(8, 16, 16),
                vae_epochs=1,
                unet_channels=(16, 32),
                unet_epochs=1,
                unet_batch_size=64,
                steps=4,
                samples_per_class=2,
            ),
        ),
        # The smoke CLIP trains for one epoch, so its embeddings are nearly parallel: only exact
        # duplicates count as duplicates there.
        retrieval=RetrievalSpec(dedup_threshold=0.99999),
        duplicates=replace(MINI_DUPLICATES, calibration_copies=20),
        methods=(
            "real_p",
            "real_2p",
            "boomerang",
            "simple_prompt",
            "simple_prompt_nows",
            "clip_prompts",
            "sariyildiz_prompts",
            "ft_conditioning",
            "ft_cluster_conditioning",
            "imagic",
            "textual_inversion",
            "pseudoword_dm",
            "retrieval",
        ),
        personalization=PersonalizationSpec(
            max_epochs=2,
            patience=1,
            val_draws=2,
            early_epochs=1,
            imagic_early_epochs=2,
            clusters=2,
            cluster_embedder="clip",
            unet_lr=1e-4,
        ),
        # Pools of 2× the need (the paper: 3×) still resample into different sets per replicate, at two thirds
        # of the images.
        generation=GenerationSpec(factor=2),
        max_classes=3,
        torch_threads=1,
        sample_batch_size=16,  # partitions of ~24 images generate in two chunks, as a resumed rebuild needs
        # Off until a test starts them; every minute, so that a daemon test sees a tick soon.
        automation=AutomationSpec(
            cron="* * * * *", backfill_on=False, new_classes_on=False, repair_on=False, interval_s=5
        ),
    ),
    "mini": Profile(
        name="mini",
        description="The embedded default: all 10 Fashion-MNIST classes staged as photos (the studio target "
        "design: pose, scale, position, lighting, backdrop), 0.18–0.3% of each class (11–18 images, imbalanced), a "
        "val set of 1% (~470 images, for a stable choice of the best epoch), the full 10k test split, a small ResNet "
        "on 20 px crops trained to early stopping, six runs a row; the baselines, the paper's best prompt method ④ "
        "(Sariyildiz et al.) and retrieval.",
        dataset=replace(FASHION_MNIST, target=STUDIO),
        # p from the target designs' learning curves (BENCHMARKS.md): on the studio design, p → 2p gains 13.5
        # points here.
        split=SplitSpec(train_fraction=0.003, val_fraction=0.01, class_rate_spread=0.4, seed=0),
        classifier=MINI_CLASSIFIER,
        # The rows the question needs. The simple prompt ① (in mini_all) would add a fifth of the classifiers and half
        # the generation to a cold run already above its 10-minute goal on two cores (BENCHMARKS.md).
        methods=("real_p", "real_2p", "sariyildiz_prompts", "retrieval"),
        torch_threads=2,
        # Steps over partitions (generation, classifiers) on two worker processes of one thread each: two one-thread
        # processes train the mini classifier 1.5× faster than one two-thread process (BENCHMARKS.md).
        workers=2,
        partition_threads=1,
        # 8 test copies among 11,560 pool images: still far above a web crawl's rate of copies of a benchmark's
        # test set,
        # low enough that retrieval's leak rate says something; the detector is calibrated on 200 more copies
        # off the pool.
        # The pool's web photos vary in pose and scale more than the target's, on brighter backdrops, in milder colours;
        # a 4-layer CLIP (36 epochs) reaches zero-shot 0.63 on the target (0.655 with CLIP's 80 templates
        # ensembled) where
        # 2 layers stop near 0.62 at any length (benchmarks/pool_variants.py, BENCHMARKS.md); the UNet trains 40 epochs
        # with EMA weights (the world is trained once and shipped).
        world=MiniWorldSpec(
            pool=PoolSpec(
                per_class=1000,
                distractors=1500,
                planted_test_duplicates=8,
                planted_val_duplicates=4,
                background_strength=0.4,
                web_scale=(0.6, 1.1),
                web_rotation=25.0,
                web_shift=4,
                web_colour=(0.5, 1.0),
            ),
            clip=ClipSpec(layers=4, epochs=36),
            diffusion=DiffusionSpec(unet_epochs=40),
            # augassets/world/v2: installed in seconds; AUGASSETS_WORLD=train trains these settings here instead
            shipped="v2",
            judge=MINI_JUDGE,
        ),
        # In the mini CLIP's 64-d space, 0.94 is the 99.9th percentile of random pool pairs: it would
        # merge distinct images (and exclude classes). 0.97 keeps the rule for near-identical ones.
        retrieval=RetrievalSpec(dedup_threshold=0.97),
        duplicates=MINI_DUPLICATES,
        # The demo runs headless (`augassets benchmark`); the daemon's sensors are there to start from the UI.
        automation=AutomationSpec(backfill_on=False, new_classes_on=False, repair_on=False),
        personalization=MINI_PERSONALIZATION,
        # Off until AUGASSETS_SCALING_RATIOS turns it on; 3 classifiers per cell keep 1,2,5,10 within the
        # documented time.
        scaling=ScalingSpec(replicates=3),
    ),
    "imagenet10": Profile(
        name="imagenet10",
        description="The paper's main setting: a 10% class-imbalance-preserving ImageNet subsample, ResNet-50, "
        "all thirteen rows of Table 1.",
        dataset=IMAGENET,
        split=SplitSpec(train_fraction=0.10, seed=0),
        classifier=RESNET50,
        methods=tuple(m.key for m in METHODS),
    ),
    "imagenet": Profile(
        name="imagenet",
        description="Full ImageNet (paper §4, Fig. 1B): every training image but a val subsample of the 10% "
        "size as target, ResNet-50; retrieval, CLIP prompts and pseudo-word + DM (⑨) against the baseline, no "
        "real_2p. Generation makes 3,900 images per class (the paper's ten times the 10% setting's 390); ⑨'s "
        "fine-tuning stops after 3 epochs (§3.1: ten times the samples, a comparable budget).",
        dataset=IMAGENET,
        split=SplitSpec(train_fraction=0.9, val_fraction=0.1, seed=0, real_extra=False),
        classifier=RESNET50,
        methods=("real_p", "clip_prompts", "pseudoword_dm", "retrieval"),
        generation=GenerationSpec(per_class=3900),
        personalization=PersonalizationSpec(max_epochs=3),
        paper_reference="imagenet_full",
    ),
    "caltech256": Profile(
        name="caltech256",
        description="Caltech256 (paper §3, Fig. 6): 80/10/10 split, the whole 80% as target, no real_2p; retrieval, "
        "CLIP prompts and pseudo-word + DM (⑨); batch 1024, lr 0.003.",
        dataset=CALTECH256,
        split=SplitSpec(train_fraction=0.80, seed=0, real_extra=False),
        classifier=replace(RESNET50, batch_size=1024, lr=0.003),
        methods=("real_p", "clip_prompts", "pseudoword_dm", "retrieval"),
        paper_reference="caltech256",
    ),
    "imagefolder": Profile(
        name="imagefolder",
        description="Any ImageFolder whose class folders are WordNet ids (train/<wnid>/, test/<wnid>/), "
        "10% target, ResNet-50.",
        dataset=IMAGE_FOLDER,
        split=SplitSpec(train_fraction=0.10, seed=0),
        classifier=RESNET50,
    ),
}


PROFILES["mini_all"] = replace(
    PROFILES["mini"],
    name="mini_all",
    description="The mini world with all thirteen methods: the baselines, Boomerang, the four prompt methods, the "
    "five personalized methods (⑤ ⑥ ⑧ with SD frozen, ⑦ ⑨ with its UNet fine-tuned) and retrieval; and the three "
    "methods beyond the paper (image-queried retrieval, MMR retrieval, retrieval → img2img; docs/plugins.md); DDIM "
    "with 10 steps; steps over partitions on two worker processes of one thread each (the foundation as in mini, on "
    "two threads).",
    methods=tuple(m.key for m in METHODS) + tuple(p.key for p in EXTENSIONS),
    # The same world as mini (one shipped world serves both): only the sampler's step count differs.
    world=replace(PROFILES["mini"].world, diffusion=replace(PROFILES["mini"].world.diffusion, steps=10)),
)


def located(profile: Profile, environ=os.environ) -> Profile:
    """``profile`` on this machine: its home, store, dataset root, device and external weights as
    ``environ`` sets them (``AUGASSETS_HOME``, ``AUGASSETS_STORE_URL``, the dataset's root variable,
    ``AUGASSETS_DEVICE``, ``WEIGHTS_ENVS``). :func:`get_profile` calls it, so the environment is read
    once, when the profile is made; a profile changed with ``replace`` keeps what was read."""
    weights = {name: environ[env] for env, name in WEIGHTS_ENVS.items() if environ.get(env)}
    return replace(
        profile,
        dataset=profile.dataset.located(environ),
        # Resolved now: a later change of the working directory moves nothing.
        home_root=str(Path(environ.get(HOME_ENV) or profile.home_root or "augassets_home").resolve()),
        store_url=environ.get(STORE_URL_ENV, ""),
        device=environ.get(DEVICE_ENV) or profile.device,
        **weights,
    )


def get_profile(name: str | None = None) -> Profile:
    """The profile named ``name``, or by ``AUGASSETS_PROFILE``, or ``mini``; with ``AUGASSETS_METHODS``
    set, running exactly those methods (in registry order); with ``AUGASSETS_CLUSTERS`` set, ⑥ with
    that many clusters; with ``AUGASSETS_SCALING_RATIOS`` set, the scaling analysis at those ratios;
    with ``AUGASSETS_WORKERS`` set, that many worker processes; with ``AUGASSETS_WORLD=train``, the mini
    world's models trained here instead of installed from the shipped world; with ``AUGASSETS_POOL_SEED``
    set, another draw of the mini web pool, its world trained here; with ``AUGASSETS_STUDY`` set (and no
    ``name``), the study file's profile instead of a built-in one. Where it runs (home, store, dataset
    root, device, weights) is read here too (:func:`located`): nothing reads the environment later."""
    study = os.environ.get(STUDY_ENV, "").strip()
    if study and not name:
        profile = load_study(Path(study))
    else:
        name = name or os.environ.get(PROFILE_ENV, DEFAULT_PROFILE)
        try:
            profile = PROFILES[name]
        except KeyError:
            raise ValueError(f"unknown profile {name!r} (set {PROFILE_ENV} to one of {', '.join(PROFILES)})") from None
    chosen = [key.strip() for key in os.environ.get(METHODS_ENV, "").split(",") if key.strip()]
    if chosen:
        from .core.methods import runnable_methods

        try:
            methods = tuple(m.key for m in runnable_methods(tuple(chosen)))
        except ValueError as error:
            raise ValueError(f"{METHODS_ENV}={','.join(chosen)}: {error}") from None
        profile = replace(profile, methods=methods)
    clusters = os.environ.get(CLUSTERS_ENV, "").strip()
    if clusters:
        if not clusters.isdigit() or int(clusters) < 1:
            raise ValueError(
                f"{CLUSTERS_ENV}={clusters!r}: ⑥'s cluster count must be a whole number ≥ 1 (the paper's "
                f"ablation: 1, 5, 10, 15)"
            )
        profile = replace(profile, personalization=replace(profile.personalization, clusters=int(clusters)))
    ratios = os.environ.get(SCALING_ENV, "").strip()
    if ratios:
        try:
            values = tuple(sorted({float(r) for r in ratios.split(",") if r.strip()}))
        except ValueError:
            values = ()
        if not values or min(values) <= 0:
            raise ValueError(
                f"{SCALING_ENV}={ratios!r}: comma-separated augmentation ratios > 0, as multiples of the target's size "
                "(the paper's 100 % … 1000 %: 1,2,5,10)"
            )
        profile = replace(profile, scaling=replace(profile.scaling, ratios=values))
    world = os.environ.get(WORLD_ENV, "").strip()
    if world:
        if world not in ("shipped", "train"):
            raise ValueError(
                f"{WORLD_ENV}={world!r}: shipped (install the world shipped with the package) or train (train it here)"
            )
        if world == "train" and profile.world and profile.world.shipped:
            profile = replace(profile, world=replace(profile.world, shipped=""))
    pool_seed = os.environ.get(POOL_SEED_ENV, "").strip()
    if pool_seed and profile.world:
        if not pool_seed.isdigit():
            raise ValueError(f"{POOL_SEED_ENV}={pool_seed!r}: the pool draw's seed must be a whole number ≥ 0")
        if (
            int(pool_seed) != profile.world.pool.seed
        ):  # another pool: its world is trained here, never taken from another draw
            profile = replace(
                profile, world=replace(profile.world, pool=replace(profile.world.pool, seed=int(pool_seed)), shipped="")
            )
    workers = os.environ.get(WORKERS_ENV, "").strip()
    if workers:
        if not workers.isdigit() or int(workers) < 1:
            raise ValueError(
                f"{WORKERS_ENV}={workers!r}: the number of worker processes must be a whole number ≥ 1 (1: in "
                f"the command's own process)"
            )
        profile = replace(profile, workers=int(workers))
    return located(profile)


# Settings a study file can only take from a fixed set (the file's checks name them).
STUDY_CHOICES = {
    "dataset.kind": ("fashion_mnist", "image_folder"),
    "dataset.class_list": ("fashion_mnist", "imagenet", "caltech256", "folders"),
    "split.non_rgb": ("skip", "convert"),
    "classifier.arch": ("resnet_small", "resnet50"),
    "scaling.short_classes": SHORT_CLASS_RULES,
    "personalization.cluster_embedder": ("inception_v3", "inception_v3_untrained", "clip"),
    "world.diffusion.scheduler": ("ddim", "dpm_solver"),
    "paper_reference": ("imagenet_10pct", "imagenet_full", "caltech256"),
}
STUDY_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def load_study(path: Path) -> Profile:
    """The profile a study file describes: ``base`` (a built-in profile, optional) with every setting the
    file names, as in :func:`study_toml`; ``home`` and ``device`` (where it runs) beside them, relative
    paths read from the file's folder; ``name`` defaults to the file's name. Every problem is one line
    naming the setting and what it accepts (``SettingsError``); nothing is run from a bad file."""
    from .core.methods import get_method
    from .core.tomlsettings import SettingsError, merge

    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError([f"{STUDY_ENV}={path}: no such study file"]) from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError([f"{path}: not a TOML file: {error}"]) from None
    errors: list[str] = []
    base = table.pop("base", None)
    if base is not None and base not in PROFILES:
        errors.append(f"base = {base!r}: one of {', '.join(PROFILES)}")
        base = None
    where = {}
    for key in ("home", "device"):
        value = table.pop(key, "")
        if not isinstance(value, str):
            errors.append(f"{key} = {value!r}: expected a string")
            value = ""
        where[key] = value
    scaling = table.get("scaling")
    for setting, keys in (
        ("methods", table.get("methods")),
        ("scaling.methods", scaling.get("methods") if isinstance(scaling, dict) else None),
    ):  # (a value of the wrong type is the type check's line, below)
        for key in keys if isinstance(keys, list) else ():
            try:
                get_method(key) if isinstance(key, str) else None
            except ValueError as error:
                errors.append(f"{setting}: {error}")
    table.setdefault("name", path.stem)
    if not STUDY_NAME.match(str(table["name"])):
        errors.append(f"name = {table['name']!r}: letters, digits, _ and - (it names the study's folder in the home)")
    profile = merge(Profile, PROFILES.get(base), table, "", STUDY_CHOICES, errors)
    if errors:
        raise SettingsError([f"{path}: {line}" for line in errors])
    home = where["home"] and str((path.parent / where["home"]).resolve())
    return replace(profile, home_root=home, device=where["device"])


def study_toml(profile: Profile) -> str:
    """``profile`` as a study file: every setting that differs from the settings' defaults."""
    from .core.tomlsettings import to_toml

    header = f"# The {profile.name} profile as a study file: augassets benchmark --study {profile.name}.toml\n"
    return header + to_toml(profile) + "\n"
