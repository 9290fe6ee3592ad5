"""Writing files and folders atomically: write a temporary sibling, rename it into place, so a killed
run leaves a path either as it was or complete — never half-written. Every writer of the package goes
through here: bytes, PNG images, Parquet tables, safetensors checkpoints and whole folders."""

from __future__ import annotations

import errno
import json
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


def file_url_path(url: str) -> str:
    """The local path a ``file://`` URL names, percent-escapes decoded (``Path.as_uri`` writes a space
    as ``%20``); anything else is returned as it is."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    return url2pathname(urlparse(url).path) if url.startswith("file://") else url


class DiskFullError(OSError):
    """No space left where a file was being written; the message names the place and what to do."""


def disk_full(path: Path, error: OSError) -> OSError:
    """``error`` as a :class:`DiskFullError` naming ``path`` when it is ENOSPC/EDQUOT, else ``error``."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(error, DiskFullError):
        return error
    return DiskFullError(
        error.errno,
        f"no space left on the disk of {path} ({os.strerror(error.errno)}): free space there, or move the home "
        "(AUGASSETS_HOME) or the image store (AUGASSETS_STORE_URL) to a larger disk, and rerun; what was written "
        "completely is kept and the rest is resumed",
    )


def _raise_named(path: Path, error: OSError) -> None:
    """Raise ``error`` as :func:`disk_full` words it (chained to it), or unchanged when it is not a full disk."""
    named = disk_full(path, error)
    if named is error:
        raise error
    raise named from error


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates its file private (0600); a published file gets the mode a plain open() would give it, so
# reports, images and tables are readable by whoever may read the folder.
FILE_MODE = 0o666 & ~_process_umask()


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``. A full disk
    raises :class:`DiskFullError` naming ``path``, with the temporary file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        _raise_named(path, error)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            _raise_named(path, error)
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


def safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file at ``path`` cannot be whole (None: its header parses and its size is
    what the header says). Reads the header only: cheap enough to run on every checkpoint each time."""
    import json
    import struct

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                return f"truncated: {size} bytes, its header alone says {length + 8}"
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        return "missing"
    except (struct.error, UnicodeDecodeError, ValueError):
        return "not a safetensors file (its header does not parse)"
    end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    if size != 8 + length + end:
        return f"truncated: {size} bytes of {8 + length + end}"
    return None


def load_checkpoint(path: str | Path, written_by: str) -> dict:
    """A safetensors state dict; a missing or damaged file is an error naming it and the asset that
    writes it (``augassets benchmark`` rebuilds a damaged checkpoint: integrity.py)."""
    from safetensors.torch import load_file

    problem = safetensors_problem(Path(path))
    if problem:
        raise ValueError(
            f"checkpoint {path} is {problem if problem == 'missing' else 'damaged, ' + problem}: "
            f"rematerialize {written_by} (augassets benchmark rebuilds it)"
        )
    return load_file(str(path))


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
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            _raise_named(final, error)
        raise
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def with_file_facts(frame: pl.DataFrame, column: str = "path") -> pl.DataFrame:
    """``frame`` with the size and SHA-256 of the file each row's ``column`` names, as
    ``{column}_bytes`` and ``{column}_sha256``. Recorded beside the rows of the partition that wrote
    the files, they let the integrity check (``augassets/integrity.py``) find a file that kept its
    name but lost its bytes: sizes are compared on every command, hashes when asked (``--verify``)."""
    import polars as pl

    sizes, digests = [], []
    for path in frame[column]:
        sizes.append(None if path is None else os.path.getsize(path))
        digests.append(None if path is None else sha256_file(path))
    return frame.with_columns(
        pl.Series(f"{column}_bytes", sizes, dtype=pl.Int64), pl.Series(f"{column}_sha256", digests, dtype=pl.Utf8)
    )


def finished_chunks(manifest: Path) -> dict[int, dict]:
    """The chunk records (``{"chunk": i, …}``) a staging folder's ``manifest.jsonl`` holds, by chunk. A
    last line torn by a kill or a full disk is cut off, so the next record starts on a line of its own."""
    chunks: dict[int, dict] = {}
    if manifest.exists():
        text = manifest.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            with open(manifest, "r+") as handle:
                handle.truncate(len(text.encode()))
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
            chunks[record["chunk"]] = record
    return chunks


def append_chunk(manifest: Path, record: dict) -> None:
    """Record a finished chunk in ``manifest.jsonl``, on disk before this returns; a full disk is named."""
    try:
        with open(manifest, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        named = disk_full(manifest, error)
        if named is error:
            raise
        raise named from error
