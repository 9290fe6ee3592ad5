import gzip
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from augassets.core.catalog import build_catalog
from augassets.core.datasets import DatasetError, FashionMnistSource, make_splits, read_idx
from augassets.core.files import save_image_atomic
from augassets.core.images import ImageStatus, inspect_image
from augassets.profiles import FASHION_MNIST, IMAGE_FOLDER, SplitSpec, get_profile

from .conftest import oversized_png, write_image


def folder_dataset(root: Path):
    return replace(IMAGE_FOLDER, default_root=str(root), root_env="AUGASSETS_TEST_UNSET_DIR")


def test_fashion_mnist_splits_are_disjoint_imbalanced_and_deterministic(tmp_path):
    profile = get_profile("mini")
    catalog = build_catalog(FASHION_MNIST, max_classes=4)
    split = replace(profile.split, max_test_per_class=20)
    splits, report = make_splits(catalog, FASHION_MNIST, split, tmp_path / "export")
    again, _ = make_splits(catalog, FASHION_MNIST, split, tmp_path / "export")
    assert splits.equals(again)

    train_like = splits.filter(pl.col("split") != "test")
    assert train_like["item"].n_unique() == train_like.height, "target, val and real_extra must be disjoint"
    counts = {
        s: dict(splits.filter(pl.col("split") == s).group_by("wnid").len().iter_rows())
        for s in ("target", "val", "real_extra")
    }
    assert counts["target"] == counts["real_extra"]
    ratio = (
        profile.split.val_fraction / profile.split.train_fraction
    )  # a val set larger than the target, same imbalance
    assert all(counts["val"][w] == round(ratio * n) for w, n in counts["target"].items())
    assert len(set(counts["target"].values())) > 1, "per-class target counts should differ (class imbalance)"
    low, high = (
        6000 * profile.split.train_fraction * (1 - profile.split.class_rate_spread),
        6000 * profile.split.train_fraction,
    )
    for n in counts["target"].values():  # 6000 per class x p x [1 - spread, 1]
        assert round(low) <= n <= round(high)
    assert splits.filter(pl.col("split") == "test").height == 4 * 20
    assert not report.skipped
    assert all(Path(p).is_file() for p in splits["path"].sample(20, seed=0))


def test_image_folder_bad_files_are_skipped_and_counted(image_folder):
    dataset = folder_dataset(image_folder)
    catalog = build_catalog(dataset)
    split = SplitSpec(train_fraction=0.2, seed=4)
    splits, report = make_splits(catalog, dataset, split, image_folder / "unused")
    # Every bad file of the class is drawn: the split needs all 3 x 4 good images of its 19 files, and
    # seed 4 puts a good one last.
    assert report.skipped_by_reason() == {"empty": 1, "corrupt": 1, "truncated": 1, "non_rgb": 3, "too_large": 1}
    assert {Path(r["item"]).name for r in report.skipped} == {
        "empty.jpg",
        "corrupt.jpg",
        "truncated.jpg",
        "cmyk.jpg",
        "rgba.png",
        "gray.png",
        "huge.png",
    }
    assert not splits["path"].str.contains("empty|corrupt|truncated|cmyk|rgba|gray").any()
    assert splits.filter(pl.col("split") == "test").height == 8


def test_non_rgb_files_can_be_converted_instead(tmp_path):
    root = tmp_path / "ds"
    for i in range(6):
        write_image(root / "train" / "n03595614" / f"{i}.jpg", fmt="JPEG")
    write_image(root / "train" / "n03595614" / "cmyk.jpg", mode="CMYK", fmt="JPEG")
    write_image(root / "train" / "n03595614" / "rgba.png", mode="RGBA")
    write_image(root / "train" / "n03595614" / "gray.png", mode="L")
    write_image(root / "test" / "n03595614" / "a.jpg", fmt="JPEG")
    dataset = folder_dataset(root)
    # 9 files, val + target + real_extra take 3 each: every file is drawn.
    splits, report = make_splits(
        build_catalog(dataset), dataset, SplitSpec(train_fraction=1 / 3, non_rgb="convert"), tmp_path / "x"
    )
    assert report.skipped == []
    assert report.converted == 3
    assert splits.filter(pl.col("split") != "test").height == 9


def test_class_folder_without_a_valid_image_is_a_clear_error(tmp_path):
    root = tmp_path / "ds"
    for i in range(6):
        write_image(root / "train" / "n03595614" / f"{i}.jpg", fmt="JPEG")
    write_image(root / "test" / "n03595614" / "a.jpg", fmt="JPEG")
    (root / "train" / "n04489008").mkdir(parents=True)
    (root / "train" / "n04489008" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (root / "train" / "n04489008" / "empty.png").write_bytes(b"")
    write_image(root / "test" / "n04489008" / "a.jpg", fmt="JPEG")
    dataset = folder_dataset(root)
    with pytest.raises(DatasetError, match=r"class n04489008: its folder 'n04489008' has no valid image"):
        make_splits(build_catalog(dataset), dataset, SplitSpec(train_fraction=0.3), tmp_path / "x")


def test_missing_test_class_folder_names_it(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        write_image(root / "train" / "n03595614" / f"{i}.jpg", fmt="JPEG")
    dataset = folder_dataset(root)
    with pytest.raises(DatasetError, match=r"class folder .*test/n03595614 is missing"):
        make_splits(build_catalog(dataset), dataset, SplitSpec(train_fraction=0.3), tmp_path / "x")


def test_missing_dataset_names_setting_and_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("AUGASSETS_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    catalog = build_catalog(FASHION_MNIST, max_classes=2)
    with pytest.raises(DatasetError, match=r"AUGASSETS_FASHION_MNIST_DIR.*apt-get install dataset-fashion-mnist"):
        make_splits(catalog, FASHION_MNIST.located(), SplitSpec(train_fraction=0.01), tmp_path / "x")
    dataset = folder_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="AUGASSETS_TEST_UNSET_DIR"):
        make_splits(catalog, dataset, SplitSpec(train_fraction=0.01), tmp_path / "x")


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "bad-idx1-ubyte.gz"
    header = bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big")
    path.write_bytes(gzip.compress(header + bytes(50)))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)
    good = tmp_path / "good-idx1-ubyte.gz"
    good.write_bytes(gzip.compress(header + bytes(range(100))))
    assert read_idx(good).tolist() == list(range(100))


def test_truncated_or_corrupted_gzip_names_the_file_and_the_setting(tmp_path):
    """A download cut short (gzip EOF) or damaged (bad deflate data, bad magic) is a DatasetError
    naming the file and what to do, not a bare EOFError or zlib.error."""
    root = tmp_path / "fmnist"
    root.mkdir()
    header = bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big")
    good = gzip.compress(header + bytes(range(100)))
    corrupted = bytearray(good)
    corrupted[20:30] = b"\xff" * 10
    damaged = {"cut": good[: len(good) // 2], "corrupted": bytes(corrupted), "not_gzip": b"plain bytes, no gzip header"}
    dataset = replace(FASHION_MNIST, default_root=str(root), root_env="AUGASSETS_TEST_UNSET_DIR")
    for kind, payload in damaged.items():
        for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (root / name).write_bytes(good)
        (root / "train-labels-idx1-ubyte.gz").write_bytes(payload)
        source = FashionMnistSource(dataset, tmp_path / "export")
        with pytest.raises(DatasetError) as error:
            source.items("train", "n03595614", 0)
        message = str(error.value)
        assert message.startswith(f"{root / 'train-labels-idx1-ubyte.gz'} cannot be read ("), kind
        assert (
            "truncated or corrupted: download it again, or point AUGASSETS_TEST_UNSET_DIR at a good copy" in message
        ), kind


def test_inspect_image_statuses(tmp_path):
    assert inspect_image(write_image(tmp_path / "ok.png")) == ImageStatus.OK
    assert inspect_image(write_image(tmp_path / "g.png", mode="L")) == ImageStatus.NON_RGB
    assert inspect_image(write_image(tmp_path / "g2.png", mode="L"), non_rgb="convert") == ImageStatus.CONVERTED
    (tmp_path / "e.jpg").write_bytes(b"")
    assert inspect_image(tmp_path / "e.jpg") == ImageStatus.EMPTY
    assert inspect_image(tmp_path / "gone.png") == ImageStatus.MISSING
    (tmp_path / "huge.png").write_bytes(oversized_png())
    assert inspect_image(tmp_path / "huge.png") == ImageStatus.TOO_LARGE


def test_atomic_save_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    from PIL import Image

    target = tmp_path / "out" / "a.png"

    def explode(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        save_image_atomic(Image.new("RGB", (4, 4)), target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_folder_never_leaves_half_a_partition(tmp_path):
    from augassets.core.files import atomic_folder

    final = tmp_path / "images" / "retrieval" / "n1"
    with atomic_folder(final) as tmp:
        (tmp / "a.png").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_folder(final) as tmp:
            (tmp / "a.png").write_bytes(b"new, half done")
            raise RuntimeError("killed mid-partition")
    assert (final / "a.png").read_bytes() == b"old", "the previous complete partition survives"
    assert sorted(p.name for p in final.parent.iterdir()) == ["n1"], "no temporary folder is left"
    # A folder left by a process killed outright (no cleanup ran) is cleared by the next attempt.
    (final.parent / "n1.tmp").mkdir()
    (final.parent / "n1.tmp" / "junk").write_bytes(b"x")
    with atomic_folder(final) as tmp:
        (tmp / "b.png").write_bytes(b"rerun")
    assert sorted(p.name for p in final.iterdir()) == ["b.png"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["n1"]


def test_caltech_style_split_takes_the_whole_80_percent_as_target_and_no_real_extra(tmp_path):
    """Paper §3 on Caltech256: 80/10/10, the 80% is the target; with a bad file the target is what is left."""
    root = tmp_path / "caltech"
    for i in range(20):
        write_image(root / "n03595614" / f"{i:02d}.jpg", fmt="JPEG")
    (root / "n03595614" / "broken.jpg").write_bytes(b"")
    dataset = replace(folder_dataset(root), train_dir="", test_dir="", holdout_fraction=0.1)
    splits, report = make_splits(build_catalog(dataset), dataset, get_profile("caltech256").split, tmp_path / "x")
    counts = dict(splits.group_by("split").len().iter_rows())
    assert counts == {"test": 2, "val": 2, "target": 16}, (
        "21 files, 1 broken: 10% test, 10% val, every other usable one as target"
    )
    assert report.skipped_by_reason() == {"empty": 1}


def test_a_profile_cannot_ask_for_real_2p_without_the_extra_real_subsample():
    with pytest.raises(ValueError, match="real_2p needs split.real_extra"):
        replace(get_profile("mini"), split=replace(get_profile("mini").split, real_extra=False))
    for name in ("imagenet", "caltech256"):
        profile = get_profile(name)
        assert "real_2p" not in profile.methods and not profile.split.real_extra
        assert {"real_p", "retrieval", "clip_prompts"} <= set(profile.methods)


def test_a_class_keeps_its_split_when_another_class_folder_is_added(tmp_path):
    """Folder classes are numbered by their WordNet offset, not their sorted position: a new folder
    sorting before the others changes none of their draws."""
    from augassets.core.datasets import class_rates

    root = tmp_path / "folders"
    for wnid, color in (("n03595614", (200, 30, 30)), ("n04489008", (30, 30, 200))):
        for i in range(10):
            write_image(root / "train" / wnid / f"{i}.png", color=color, fmt="PNG")
        for i in range(2):
            write_image(root / "test" / wnid / f"{i}.png", color=color, fmt="PNG")
    dataset = replace(IMAGE_FOLDER, default_root=str(root), root_env="AUGASSETS_TEST_UNSET_DIR")
    split = SplitSpec(train_fraction=0.3, class_rate_spread=0.5, seed=3)
    before, _ = make_splits(build_catalog(dataset), dataset, split, tmp_path / "x")
    for i in range(10):
        write_image(root / "train" / "n02774152" / f"{i}.png", fmt="PNG")  # bag: sorts first
    write_image(root / "test" / "n02774152" / "0.png", fmt="PNG")
    after, _ = make_splits(build_catalog(dataset), dataset, split, tmp_path / "x")
    columns = ["split", "wnid", "item", "path"]
    assert after.filter(pl.col("wnid") != "n02774152").select(columns).equals(before.select(columns))
    # A packaged list keeps its stream indexed by label: a prefix of classes draws what it drew before.
    assert class_rates(split, [0, 1, 2]).tolist() == class_rates(split, list(range(10)))[:3].tolist()
