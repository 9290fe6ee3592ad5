"""pHash must mean what imagehash.phash means; duplicate search must find exactly the close pairs."""

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from augassets.core.duplicates import duplicate_pairs
from augassets.core.phash import from_hex, hamming, phash_files, phash_images, to_hex


def scene(rng, size) -> Image.Image:
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        x1, y1 = x0 + int(rng.integers(4, size // 2)), y0 + int(rng.integers(4, size // 2))
        draw.ellipse([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image.filter(ImageFilter.GaussianBlur(1))


def imagehash_hex(image_or_path, hash_size: int = 8) -> str:
    image = Image.open(image_or_path) if not isinstance(image_or_path, Image.Image) else image_or_path
    return str(imagehash.phash(image, hash_size=hash_size))


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


@pytest.mark.parametrize("hash_size", [8, 16])
def test_phash_is_bit_identical_to_imagehash_on_exact_decode(image_files, hash_size):
    hashes, ok = phash_files(image_files, hash_size, batch_size=16, decode="exact")
    assert ok.tolist() == [True] * 60 + [False]
    assert hashes.shape == (61, hash_size * hash_size // 8)
    assert to_hex(hashes[:60]) == [imagehash_hex(p, hash_size) for p in image_files[:60]]


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
    assert to_hex(phash_images(images)) == [imagehash_hex(p) for p in image_files[:10]]
    assert to_hex(phash_images(images, 16)) == [imagehash_hex(p, 16) for p in image_files[:10]]


def test_hex_codes_and_hamming():
    codes = from_hex(["0000000000000000", "ffffffffffffffff", "8000000000000001"])
    assert codes[2].tolist() == [0x80, 0, 0, 0, 0, 0, 0, 1]
    assert to_hex(codes) == ["0000000000000000", "ffffffffffffffff", "8000000000000001"]
    assert hamming(codes, np.zeros((3, 8), np.uint8)).tolist() == [0, 64, 2]
    with pytest.raises(ValueError, match="64 bits, expected 256"):
        from_hex(["ffffffffffffffff"], hash_size=16)


@pytest.mark.parametrize("bits", [64, 256])
def test_duplicate_pairs_equal_brute_force(bits):
    rng = np.random.default_rng(1)
    database = rng.integers(0, 256, (3000, bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (500, bits // 8), dtype=np.uint8)
    if bits == 256:  # random 256-bit codes are ~128 bits apart: make a crowd of near ones
        database[:, 4:] = 0
        queries[:, 4:] = 0
    # Plant near and far neighbours: flip 0..12 bits of some database codes.
    for q in range(0, 500, 5):
        flips = rng.choice(bits, size=int(rng.integers(0, 13)), replace=False)
        mask = np.zeros(bits, dtype=np.uint8)
        mask[flips] = 1
        queries[q] = database[q * 3] ^ np.packbits(mask)
    q_idx, d_idx, dist = duplicate_pairs(queries, database, threshold=10, block=128)
    brute = hamming(queries[:, None, :], database[None, :, :])
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
    assert choose_threshold(detector_curve(set(), planted, range(1, 4)), 0.95)["threshold"] == 3, (
        "none reaches: the loosest"
    )
