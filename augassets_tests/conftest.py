"""Test settings: a throwaway AUGASSETS_HOME / DAGSTER_HOME per session, and ``smoke`` as the profile
of anything that reads ``AUGASSETS_PROFILE`` (the CLI's default, subprocesses). Tests build the
definitions they use with ``build_defs(get_profile("smoke"))``.
"""

import functools
import io
import os
import socket
import subprocess
import tempfile
import zlib
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="augassets-tests-"))
os.environ["AUGASSETS_PROFILE"] = "smoke"
os.environ["AUGASSETS_HOME"] = str(_SESSION_DIR / "home")
os.environ["DAGSTER_HOME"] = str(_SESSION_DIR / "dagster")
(_SESSION_DIR / "dagster").mkdir(parents=True, exist_ok=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


def write_image(path: Path, mode: str = "RGB", color=(200, 30, 30), size: int = 32, fmt: str | None = None) -> Path:
    """A small real image file of the given mode, with a little texture so JPEG/PNG are non-trivial."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    base = np.array(Image.new("RGB", (size, size), color), dtype=np.int16)
    noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy, "RGB").convert(mode).save(path, format=fmt)
    return path


@functools.cache
def oversized_png() -> bytes:
    """A real PNG of 13,500 × 13,500 black pixels (22 kB on disk): over PIL's decompression-bomb limit
    of 2 × ``Image.MAX_IMAGE_PIXELS``, so opening it raises ``DecompressionBombError``."""
    buffer = io.BytesIO()
    Image.new("1", (13_500, 13_500)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path: Path):
    """An ImageFolder with train/ and test/ folders for two real wnids, one good image set per class
    plus every kind of bad file in the first class's training folder."""
    root = tmp_path / "imagefolder"
    classes = {"n03595614": (220, 40, 40), "n04489008": (40, 40, 220)}
    for wnid, color in classes.items():
        for i in range(12):
            write_image(root / "train" / wnid / f"img_{i:02d}.jpg", color=color, fmt="JPEG")
        for i in range(4):
            write_image(root / "test" / wnid / f"img_{i:02d}.png", color=color, fmt="PNG")
    bad = root / "train" / "n03595614"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "corrupt.jpg").write_bytes(b"this is not an image at all" * 10)
    full = write_image(tmp_path / "full.jpg", fmt="JPEG").read_bytes()
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 2])
    write_image(bad / "cmyk.jpg", mode="CMYK", fmt="JPEG")
    write_image(bad / "rgba.png", mode="RGBA", fmt="PNG")
    write_image(bad / "gray.png", mode="L", fmt="PNG")
    (bad / "huge.png").write_bytes(oversized_png())
    return root


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real tmpfs of 100 kB mounted at a fresh folder (a full disk, for real), and a function that
    resizes it (``resize("4m")``); unmounted at the end. Mounting needs root, as CI runs here."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    started = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if started.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {started.stderr.strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


@pytest.fixture(scope="session")
def benchmark_run():
    """The main command on smoke, once per session: (profile, results table)."""
    from augassets import cli
    from augassets.profiles import get_profile

    profile = get_profile("smoke")
    table = cli.benchmark(profile, say=lambda *_: None)
    return profile, table


@pytest.fixture
def private_state(benchmark_run, tmp_path, monkeypatch):
    """The benchmark's state and Dagster instance (run history, automation cursor) copied to fresh
    homes: what a test changes there leaves the module's shared run as it was."""
    import os
    import shutil

    import polars as pl

    from augassets.profiles import located

    profile, _ = benchmark_run
    copy = tmp_path / "home" / profile.name
    shutil.copytree(profile.home, copy)
    shutil.copytree(os.environ["DAGSTER_HOME"], tmp_path / "dagster")
    # Tables name files by absolute path: point the copy's at the copy's files.
    for part in (copy / "store" / "tables").rglob("*.parquet"):
        frame = pl.read_parquet(part)
        text = [c for c, dtype in frame.schema.items() if dtype == pl.Utf8]
        frame.with_columns(
            pl.col(c).str.replace_all(str(profile.home), str(copy), literal=True) for c in text
        ).write_parquet(part)
    monkeypatch.setenv("AUGASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    return located(profile)  # the profile reads its home once, when made: here, at the copy
