"""Writing files and folders atomically: write a temporary sibling, rename it into place, so a killed
run leaves a path either as it was or complete — never half-written. Every writer of the package goes
through here: bytes, PNG images, Parquet tables, safetensors checkpoints and whole folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl
    from PIL import Image


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """``path`` holds either its old bytes or ``data``, never part of them."""
    write_atomic(path, lambda handle: handle.write(data))


def save_image_atomic(image: Image.Image, path: Path) -> None:
    """``image`` as a PNG file at ``path``."""
    write_atomic(path, lambda handle: image.save(handle, format="PNG"))


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    """``frame`` as a Parquet file at ``path``."""
    write_atomic(path, frame.write_parquet)


def save_safetensors_atomic(tensors: dict, path: Path) -> None:
    """A state dict as a safetensors file at ``path``."""
    from safetensors.torch import save

    write_bytes_atomic(save(tensors), path)


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``final``; on success it replaces ``final`` whole, on
    an error it is removed. A killed run leaves at most a ``.tmp`` folder that the next run clears."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
