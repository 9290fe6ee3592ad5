"""Batched perceptual hashing with the exact definition of ``imagehash.phash``.

imagehash's pHash: grayscale, LANCZOS-resize to 32×32, 2-D DCT-II (scipy's unnormalized form), keep
the 8×8 lowest frequencies, and set a bit where a coefficient exceeds their median; bits row-major,
the first one most significant. ``hash_size`` h generalizes it as ``imagehash.phash(image, hash_size=h)``
does: resize to 4h × 4h, keep h × h coefficients, h² bits. The paper's duplicate threshold (Hamming
distance < 10 of 64 bits, h = 8) only means the same if our bits are the same, so this module keeps
every step of that definition and changes how the work is done:

* decode once and reduce early: JPEGs can be decoded straight to grayscale (PIL's draft mode skips
  chroma upsampling and colour conversion; the luma differs from convert("L") by rounding only) or
  also at a reduced scale (a DCT-domain downscale inside the decoder; faster, approximate);
* the DCT is two small matrix products for a whole batch, computing only the h×h coefficients kept;
* decoding runs on a thread pool (PIL releases the GIL while it decodes and resizes).

A batch of hashes is a ``(n, h²/8)`` uint8 array of *codes* (most significant byte first: what faiss
binary indexes take); tables store them as hex strings, ``str(imagehash.phash(image, hash_size=h))``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from PIL import Image

HASH_SIZE = 8  # the paper's 64-bit pHash
HIGHFREQ_FACTOR = 4  # imagehash's default: hash an image resized to 4 × hash_size pixels square
DECODE_MODES = ("exact", "gray", "reduced")


@cache
def _dct_matrix(rows: int, n: int) -> np.ndarray:
    """The first ``rows`` rows of scipy's unnormalized DCT-II matrix of size n: 2·cos(πk(2i+1)/2n)."""
    k = np.arange(rows)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


def load_gray(source, size: int, decode: str = "gray") -> np.ndarray | None:
    """One image as imagehash sees it: 'L' mode, LANCZOS-resized to size × size, uint8. None if it fails
    to decode. ``decode`` (JPEG only): ``exact`` decodes RGB then converts, as imagehash does;
    ``gray`` decodes luma only at full size (bit-identical hashes on ~99.7% of photos);
    ``reduced`` decodes luma at ≥ 2 × size px (several times faster; ~75% bit-identical, a few bits off)."""
    try:
        with Image.open(source) as image:
            if image.format == "JPEG" and decode != "exact":
                image.draft("L", image.size if decode == "gray" else (2 * size, 2 * size))
            gray = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(gray, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def hash_pixels(batch: np.ndarray, hash_size: int = HASH_SIZE) -> np.ndarray:
    """pHash codes of a (n, 4h, 4h) batch of grayscale pixels: (n, h²/8) uint8."""
    dct = _dct_matrix(hash_size, batch.shape[1])
    low = dct @ batch.astype(np.float64) @ dct.T  # (n, h, h): the kept DCT-II coefficients
    flat = low.reshape(len(batch), -1)
    return np.packbits(flat > np.median(flat, axis=1, keepdims=True), axis=1)


def code_bytes(hash_size: int = HASH_SIZE) -> int:
    """Bytes per code: h² bits."""
    if hash_size < 2 or (hash_size * hash_size) % 8:
        raise ValueError(
            f"pHash hash_size {hash_size}: h² must be a multiple of 8 bits (DuplicateSpec.hash_size: 8 or 16)"
        )
    return hash_size * hash_size // 8


def phash_files(
    paths: Sequence[str],
    hash_size: int = HASH_SIZE,
    batch_size: int = 1024,
    workers: int | None = None,
    decode: str = "gray",
) -> tuple[np.ndarray, np.ndarray]:
    """pHash codes of image files, streamed in batches. Returns (codes, ok): files that fail to decode
    get an all-zero code and ``ok=False``."""
    if decode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {decode!r} (one of {', '.join(DECODE_MODES)})")
    size = hash_size * HIGHFREQ_FACTOR
    workers = workers or min(8, os.cpu_count() or 1)
    codes = np.zeros((len(paths), code_bytes(hash_size)), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(pool.map(lambda p: load_gray(p, size, decode), paths[start : start + batch_size]))
            good = [i for i, pixels in enumerate(chunk) if pixels is not None]
            if good:
                codes[start + np.array(good)] = hash_pixels(np.stack([chunk[i] for i in good]), hash_size)
                ok[start + np.array(good)] = True
    return codes, ok


def phash_images(images: Iterable[Image.Image], hash_size: int = HASH_SIZE) -> np.ndarray:
    """pHash codes of in-memory PIL images (e.g. freshly generated ones)."""
    size = hash_size * HIGHFREQ_FACTOR
    arrays = [np.asarray(image.convert("L").resize((size, size), Image.Resampling.LANCZOS)) for image in images]
    return hash_pixels(np.stack(arrays), hash_size) if arrays else np.zeros((0, code_bytes(hash_size)), dtype=np.uint8)


def to_hex(codes: np.ndarray) -> list[str]:
    """Codes as imagehash prints them (``str(imagehash.phash(image, hash_size))``)."""
    return [row.tobytes().hex() for row in codes]


def from_hex(strings: Sequence[str], hash_size: int = HASH_SIZE) -> np.ndarray:
    """Hex strings back to codes; the hash size is checked, so tables of another size are not mixed in."""
    width = code_bytes(hash_size)
    codes = np.zeros((len(strings), width), dtype=np.uint8)
    for i, text in enumerate(strings):
        raw = bytes.fromhex(text)
        if len(raw) != width:
            raise ValueError(
                f"pHash {text!r} has {8 * len(raw)} bits, expected {8 * width} (hash_size {hash_size}): rebuild "
                f"reference_hashes"
            )
        codes[i] = np.frombuffer(raw, dtype=np.uint8)
    return codes


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of codes, broadcast over every axis but the last (the code's bytes)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)
