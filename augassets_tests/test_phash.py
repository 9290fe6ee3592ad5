"""pHash must mean what imagehash.phash means; duplicate search must find exactly the close pairs."""

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from augassets.core.duplicates import duplicate_pairs
from augassets.core.phash import hamming, phash_files, phash_images, to_bytes


def scene(rng, size) -> Image.Image:
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        x1, y1 = x0 + int(rng.integers(4, size // 2)), y0 + int(rng.integers(4, size // 2))
        draw.ellipse([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image.filter(ImageFilter.GaussianBlur(1))


def imagehash_int(image_or_path) -> int:
    image = Image.open(image_or_path) if not isinstance(image_or_path, Image.Image) else image_or_path
    return int(str(imagehash.phash(image)), 16)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("phash")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(60):
        image = scene(rng, int(rng.choice([28, 64, 200])))
        path = root / f"{i}.{'png' if i % 2 else 'jpg'}"
        image.convert("L" if i % 5 == 0 else "RGB").save(path)
        paths.append(str(path))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return paths + [str(root / "broken.jpg")]


def test_phash_is_bit_identical_to_imagehash_on_exact_decode(image_files):
    hashes, ok = phash_files(image_files, batch_size=16, decode="exact")
    assert ok.tolist() == [True] * 60 + [False]
    reference = [imagehash_int(p) for p in image_files[:60]]
    assert [int(h) for h in hashes[:60]] == reference


def test_phash_with_jpeg_draft_modes_stays_close(image_files):
    exact, _ = phash_files(image_files[:60], decode="exact")
    gray, _ = phash_files(image_files[:60], decode="gray")
    reduced, _ = phash_files(image_files[:60], decode="reduced")
    assert (hamming(gray, exact) == 0).mean() >= 0.95
    assert hamming(reduced, exact).max() < 10
    with pytest.raises(ValueError, match="unknown decode mode"):
        phash_files(image_files[:1], decode="fast")


def test_phash_images_matches_files(image_files):
    images = [Image.open(p) for p in image_files[:10]]
    assert phash_images(images).tolist() == [imagehash_int(p) for p in image_files[:10]]


def test_to_bytes_and_hamming():
    a = np.array([0, 0xFFFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0001], dtype=np.uint64)
    assert to_bytes(a)[2].tolist() == [0x80, 0, 0, 0, 0, 0, 0, 1]
    assert hamming(a, np.zeros(3, np.uint64)).tolist() == [0, 64, 2]


def test_duplicate_pairs_equal_brute_force():
    rng = np.random.default_rng(1)
    database = rng.integers(0, 2**63, 3000, dtype=np.uint64)
    queries = rng.integers(0, 2**63, 500, dtype=np.uint64)
    # Plant near and far neighbours: flip 0..12 bits of some database codes.
    for q in range(0, 500, 5):
        flips = rng.choice(64, size=int(rng.integers(0, 13)), replace=False)
        queries[q] = database[q * 3] ^ np.uint64(sum(1 << int(f) for f in flips))
    q_idx, d_idx, dist = duplicate_pairs(queries, database, threshold=10, block=128)
    brute = hamming(queries[:, None], database[None, :])
    expected = {(int(i), int(j)) for i, j in zip(*np.nonzero(brute < 10))}
    assert set(zip(q_idx.tolist(), d_idx.tolist())) == expected
    assert (dist == brute[q_idx, d_idx]).all() and (dist < 10).all()
    assert len(expected) > 50


def test_detector_curve_and_threshold_choice_on_planted_truth():
    """The mini world's leak threshold: the strictest one that recalls 95% of the planted duplicates."""
    from augassets.core.duplicates import choose_threshold, detector_curve

    planted = {(i, f"test/{i}") for i in range(20)}
    found = {(i, f"test/{i}", 0 if i < 10 else 2) for i in range(20)}  # planted pairs at distance 0 or 2
    found |= {(100 + i, f"test/{i}", 4) for i in range(10)}  # unrelated look-alikes at 4 …
    found |= {(200 + i, f"test/{i % 20}", 8) for i in range(200)}  # … and many more at 8
    found.add((5, "test/6", 2))  # a planted image close to another test image too
    curve = detector_curve(found, planted, range(1, 11))
    by_t = {p["threshold"]: p for p in curve}
    assert by_t[1]["recall"] == 0.5 and by_t[1]["precision"] == 1.0
    assert by_t[3]["recall"] == 1.0 and by_t[3]["precision"] == 20 / 21
    assert by_t[5]["precision"] == 20 / 31
    assert by_t[10]["pairs"] == 231 and by_t[10]["precision"] == 20 / 231
    assert choose_threshold(curve, 0.95)["threshold"] == 3
    assert choose_threshold(curve, 0.5)["threshold"] == 1
    assert choose_threshold(detector_curve(set(), planted, range(1, 4)), 0.95)["threshold"] == 3, "none reaches: the loosest"
