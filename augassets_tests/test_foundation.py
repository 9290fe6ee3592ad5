"""The foundation: CLIP tokenizer, the web pool, loaders on the real code paths, and the smoke
foundation materialized in-process."""

import shutil
from pathlib import Path

import imagehash
import numpy as np
import polars as pl
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image
from transformers import CLIPModel

from augassets.core.clip import VOCAB_SIZE, build_processor, build_tokenizer, clip_config
from augassets.core.diffusion import assemble_pipeline, make_safety_checker, make_unet, make_vae, text_tower
from augassets.core.web_pool import PoolSources, pool_items, write_pool
from augassets.profiles import ClipSpec, DiffusionSpec, PoolSpec
from augassets.resources import ClipEncoderResource, DiffusionBackendResource

TINY_CLIP = ClipSpec(hidden_size=32, layers=1, heads=2, projection_dim=16)
TINY_SD = DiffusionSpec(vae_channels=(8, 16, 16), unet_channels=(16, 32))


def test_tokenizer_is_the_real_clip_bpe(tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = build_tokenizer(tmp_path)
    reference = SimpleTokenizer()
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.model_max_length == 77
    for text in [
        "A photo of jersey, T-shirt, tee shirt.",
        "gymshoe,sneaker,tennisshoe",
        "café — naïve 🙂 O'Neil's \"boots\"",
    ]:
        assert tokenizer(text).input_ids == [49406, *reference.encode(text), 49407]
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()


def garment_like(rng) -> np.ndarray:
    """A smooth bright blob on black, like a Fashion-MNIST image."""
    from PIL import ImageDraw, ImageFilter

    image = Image.new("L", (28, 28), 0)
    x0, y0 = rng.integers(2, 10, 2)
    ImageDraw.Draw(image).ellipse(
        [int(x0), int(y0), int(x0) + int(rng.integers(10, 16)), int(y0) + int(rng.integers(10, 16))],
        fill=int(rng.integers(120, 255)),
    )
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)))


def fake_sources(n_per_class=6):
    rng = np.random.default_rng(0)
    arrays = {f"train/{i}": garment_like(rng) for i in range(40)}
    arrays.update({f"test/{i}": garment_like(rng) for i in range(5)})
    return PoolSources(
        pixels=arrays.__getitem__,
        target_image=lambda item: Image.fromarray(arrays[item], "L"),
        class_items={
            "n1": [f"train/{i}" for i in range(n_per_class)],
            "n2": [f"train/{i}" for i in range(20, 20 + n_per_class)],
        },
        duplicate_items=[("test/0", "test", "n1"), ("test/1", "val", "n2")],
        lemmas={"n1": ["boot"], "n2": ["bag", "handbag"]},
        hypernyms={"n1": "footwear", "n2": "container"},
    ), arrays


def test_web_pool_layout_noise_and_planted_duplicates(tmp_path):
    sources, arrays = fake_sources()
    spec = PoolSpec(per_class=6, distractors=5, planted_test_duplicates=1, planted_val_duplicates=1, nsfw_rate=0.3)
    metadata, truth = write_pool(pool_items(sources, spec), tmp_path, tmp_path)
    assert metadata.height == truth.height == 12 + 5 + 2
    assert pl.read_parquet(tmp_path / "metadata" / "metadata_0.parquet").equals(metadata)
    assert set(metadata.columns) >= {"url", "caption", "aesthetic", "nsfw"}
    assert all(Path(u.removeprefix("file://")).is_file() for u in metadata["url"])
    assert metadata["aesthetic"].is_between(0, 10).all()
    assert metadata["nsfw"].sum() > 0
    assert dict(truth.group_by("kind").len().iter_rows()) == {"class": 12, "distractor": 5, "planted_duplicate": 2}
    # Planted duplicates are near-duplicates in the paper's sense: pHash Hamming distance < 10.
    for row in truth.filter(pl.col("kind") == "planted_duplicate").iter_rows(named=True):
        planted = Image.open(metadata["url"][row["pool_id"]].removeprefix("file://"))
        original = Image.fromarray(arrays[row["source_item"]], "L")
        assert imagehash.phash(planted) - imagehash.phash(original) < 10
    # Deterministic for a seed.
    again, _ = write_pool(pool_items(sources, spec), tmp_path / "again", tmp_path)
    assert again.drop("url").equals(metadata.drop("url"))


def tiny_pipeline(folder: Path) -> Path:
    """Random tiny CLIP + SD components, save_pretrained like the real ones."""
    torch.manual_seed(0)
    clip = CLIPModel(clip_config(TINY_CLIP, 32)).eval()
    processor = build_processor(folder / "tokenizer_files", 32)
    clip.save_pretrained(folder / "clip")
    processor.save_pretrained(folder / "clip")
    pipeline = assemble_pipeline(
        make_vae(TINY_SD, 32),
        make_unet(TINY_SD, 8, TINY_CLIP.hidden_size),
        text_tower(clip),
        processor.tokenizer,
        make_safety_checker(clip, np.ones(TINY_CLIP.projection_dim, np.float32), threshold=0.5),
        processor.image_processor,
        "ddim",
    )
    pipeline.save_pretrained(folder / "sd")
    return folder


def as_hub_cache(folder: Path, cache: Path, repo_id: str) -> None:
    """Lay out ``folder`` as a Hugging Face hub cache entry for ``repo_id`` (offline loading)."""
    org, name = repo_id.split("/")
    revision = "0" * 40
    entry = cache / f"models--{org}--{name}"
    shutil.copytree(folder, entry / "snapshots" / revision)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(revision)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("tiny"))


def test_diffusion_backend_loads_a_folder_for_txt2img_and_img2img(tiny_models):
    backend = DiffusionBackendResource(weights=str(tiny_models / "sd"), steps=2, scheduler="dpm_solver")
    txt2img = backend.load("txt2img")
    assert isinstance(txt2img, StableDiffusionPipeline)
    out = txt2img(
        ["A photo of boot."], num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)
    )
    assert out.images[0].size == (32, 32) and len(out.nsfw_content_detected) == 1
    img2img = backend.load("img2img")
    assert isinstance(img2img, StableDiffusionImg2ImgPipeline)
    out = img2img(["A photo of boot."], image=Image.new("RGB", (32, 32), "red"), strength=0.5, num_inference_steps=4)
    assert out.images[0].size == (32, 32)


def test_loaders_accept_offline_hub_ids(tiny_models, tmp_path):
    cache = tmp_path / "hub"
    as_hub_cache(tiny_models / "sd", cache, "augassets/tiny-sd")
    as_hub_cache(tiny_models / "clip", cache, "augassets/tiny-clip")
    pipeline = DiffusionBackendResource(weights="augassets/tiny-sd", offline=True, cache_dir=str(cache)).load()
    assert pipeline.unet.config.sample_size == 8
    model, processor = ClipEncoderResource(model="augassets/tiny-clip", offline=True, cache_dir=str(cache)).load()
    assert model.config.projection_dim == TINY_CLIP.projection_dim and len(processor.tokenizer) == VOCAB_SIZE
    with pytest.raises(FileNotFoundError, match="DiffusionBackendResource.weights.*offline"):
        DiffusionBackendResource(weights="CompVis/stable-diffusion-v1-4", offline=True, cache_dir=str(cache)).load()


def test_missing_weights_folder_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="DiffusionBackendResource.weights"):
        DiffusionBackendResource(weights=str(tmp_path / "nothing")).load()
    with pytest.raises(FileNotFoundError, match="ClipEncoderResource.model"):
        ClipEncoderResource(model=str(tmp_path / "nothing")).load()


def test_generation_is_seeded_resumable_and_identical_after_a_kill(tiny_models, tmp_path):
    from augassets.core.generation import GenerationRequest, generate_partition

    pipeline = DiffusionBackendResource(weights=str(tiny_models / "sd"), safety_checker=False).load()
    request = GenerationRequest("simple_prompt", "n1", ["A photo of boot."] * 5, ["simple"] * 5, base_seed=7)
    options = dict(steps=2, guidance_scale=2.0, batch_size=2)
    clean = generate_partition(pipeline, request, tmp_path / "clean" / "n1", **options)
    assert [r["index"] for r in clean] == [0, 1, 2, 3, 4] and len({r["seed"] for r in clean}) == 5

    class Killed(Exception):
        pass

    def kill_after_first_chunk(line):
        raise Killed(line)

    final = tmp_path / "resumed" / "n1"
    with pytest.raises(Killed):
        generate_partition(pipeline, request, final, progress=kill_after_first_chunk, **options)
    assert not final.exists(), "nothing is published before the partition is complete"
    assert sorted(p.name for p in final.with_name("n1.partial").glob("*.png")) == ["00000.png", "00001.png"]
    resumed = generate_partition(pipeline, request, final, **options)
    assert [r["seed"] for r in resumed] == [r["seed"] for r in clean]
    for a, b in zip(clean, resumed):
        assert np.array_equal(np.asarray(Image.open(a["path"])), np.asarray(Image.open(b["path"])))


def test_a_safety_checker_that_rejects_everything_stops_with_a_clear_error(tiny_models, tmp_path):
    from augassets.core.generation import GenerationError, GenerationRequest, generate_partition

    pipeline = DiffusionBackendResource(weights=str(tiny_models / "sd")).load()
    with torch.no_grad():
        pipeline.safety_checker.concept_embeds_weights.fill_(-10.0)  # every image is "unsafe"
    request = GenerationRequest("clip_prompts", "n2", ["a photo of a boot."] * 2, ["clip"] * 2)
    with pytest.raises(GenerationError, match=r"clip_prompts/n2: the safety checker rejected image 0 .* 3 times"):
        generate_partition(
            pipeline, request, tmp_path / "n2", steps=2, guidance_scale=2.0, batch_size=2, max_attempts=3
        )


def test_boomerang_generates_from_target_images(tiny_models, tmp_path):
    from augassets.core.generation import GenerationRequest, generate_partition

    sources = []
    for i, colour in enumerate(("red", "blue")):
        path = tmp_path / f"target_{i}.png"
        Image.new("L" if i else "RGB", (28, 28), colour).save(path)  # target images are 28 px, any mode
        sources.append(str(path))
    pipeline = DiffusionBackendResource(weights=str(tiny_models / "sd"), safety_checker=False).load("img2img")
    request = GenerationRequest(
        "boomerang", "n1", [""] * 3, ["boomerang"] * 3, init_images=[sources[i % 2] for i in range(3)], strength=0.5
    )
    records = generate_partition(
        pipeline, request, tmp_path / "boomerang" / "n1", steps=4, guidance_scale=1.0, batch_size=2
    )
    assert len(records) == 3
    assert all(Image.open(r["path"]).size == (32, 32) for r in records)


def test_safety_checker_fit_finds_a_planted_direction_on_the_held_out_half():
    """Flagged embeddings carry a shift along one direction: the fitted concept points along it, and
    the held-out (odd) rows are told apart perfectly."""
    from augassets.core.diffusion import fit_safety_checker

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(400, 16)).astype(np.float32)
    flags = np.zeros(400, dtype=bool)
    flags[::10] = flags[1::10] = True  # flagged rows in both halves
    embeddings[flags, 3] += 30.0
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    safety = fit_safety_checker(embeddings, flags)
    assert int(np.argmax(np.abs(safety.concept))) == 3
    assert (safety.precision, safety.recall) == (1.0, 1.0)


def test_sample_fidelity_counts_per_class_and_relative_to_the_judge():
    import polars as pl

    from augassets.core.judge import sample_fidelity

    catalog = pl.DataFrame({"label": [0, 1], "wnid": ["n1", "n2"]})
    labels = np.array([0, 0, 0, 0, 1, 1])
    judged = np.array([0, 0, 0, 1, 1, 0])  # class 0: 3/4, class 1: 1/2
    recognized = np.array([0, 1, 1, 1, 1, 1])  # class 0: 1/4, class 1: 2/2
    score = sample_fidelity(catalog, labels, judged, recognized, {0: 0.8, 1: 0.6})
    assert score.per_class["class_fidelity"].to_list() == [0.75, 0.5]
    assert score.per_class["target_recognizability"].to_list() == [0.25, 1.0]
    assert score.per_class["samples"].to_list() == [4, 2]
    assert score.per_class["relative_fidelity"].to_list() == pytest.approx([0.75 / 0.8, 0.5 / 0.6])
    assert score.class_fidelity == pytest.approx(4 / 6) and score.judge_accuracy == pytest.approx(0.7)
    assert score.relative == pytest.approx((4 / 6) / 0.7) and score.target_recognizability == pytest.approx(3 / 6)


def test_joint_fine_tuning_trains_the_same_with_its_latents_memory_mapped_from_disk(tiny_models, tmp_path):
    """⑦ ⑨ hold every class's VAE latents at once (full ImageNet: about 150 GiB); above
    ``PersonalizationSpec.latents_in_memory_gib`` they are memory-mapped from files in the run's folder.
    The run is the same to the last bit either way, and the files are gone after it."""
    from augassets.core.finetune import ClassImages, FinetuneSpec, JointClass, finetune_jointly

    from .conftest import write_image

    colors = {"n03595614": (200, 30, 30), "n04120489": (30, 60, 200)}
    classes = [
        JointClass(
            wnid,
            f"A photo of {wnid}.",
            "shirt",
            ClassImages(
                [str(write_image(tmp_path / "images" / wnid / f"train_{i}.png", color=color)) for i in range(4)],
                [str(write_image(tmp_path / "images" / wnid / f"val_{i}.png", color=color)) for i in range(2)],
                32,
            ),
        )
        for wnid, color in colors.items()
    ]
    spec = FinetuneSpec(max_epochs=2, patience=2, batch_size=4, reference_batch_size=4, val_draws=2, early_epochs=1)
    results = {}
    for where, limit in (("memory", 0), ("disk", 1)):
        pipeline = StableDiffusionPipeline.from_pretrained(tiny_models / "sd", safety_checker=None)
        folder = tmp_path / where
        results[where] = finetune_jointly(
            pipeline, classes, spec, 1e-4, folder, {"run": where}, ["a photo of {}"], latents_max_bytes=limit
        )
        assert results[where].extra["latents"] == where
        assert not (folder / "latents").exists()
    memory, disk = results["memory"], results["disk"]
    assert [h["val_loss"] for h in memory.history] == [h["val_loss"] for h in disk.history]
    assert memory.params.keys() == disk.params.keys()
    assert all(torch.equal(memory.params[name], disk.params[name]) for name in memory.params)
