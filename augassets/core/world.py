"""The shipped mini world: trained foundation models that come with the package.

A real user loads Stable Diffusion and CLIP instead of training them; the mini world does the same.
``augassets foundation --rebuild`` trains the world's models (CLIP, the VAE and UNet of the mini Stable
Diffusion, and the fidelity judge) once, ``augassets world export`` copies them into
``augassets/world/<name>/`` with a manifest, and from then on every fresh home installs them from
there in seconds instead of training them.

The manifest (``manifest.json``) records, per shipped asset, every file's SHA-256 and size, and the
code versions of the asset and of everything upstream of it (the pool, the splits, the target design
…): a shipped model is used only where the definitions that would train it now are the definitions
that trained it. Anything else is an error naming what differs and both ways out — never a silent use
of a model made from other data, never a silent retraining. A file whose checksum does not match is
an error naming the file, and nothing is installed from it.

Floating-point tensors are stored in half precision (``STORED_DTYPE``) to keep the repository small
and are installed as float32, the precision the models were trained and are run in. The installed
assets measure their figures again (CLIP zero-shot, the judge's accuracies, the transfer ratio), so
what the rounding costs shows beside the manifest's figures from the training home.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
WORLDS_DIR = Path(__file__).resolve().parents[1] / "world"
REBUILD_HINT = "augassets foundation --rebuild"
EXPORT_HINT = "augassets world export"
STORED_DTYPE = "float16"


def world_folder(name: str) -> Path:
    """``augassets/world/<name>``, or ``name`` itself where it is a path (holds a ``/``)."""
    return Path(name).resolve() if "/" in name else WORLDS_DIR / name


class ShippedWorldError(RuntimeError):
    """A shipped world that cannot be used: missing, damaged, or made by other definitions."""


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class ShippedWorld:
    """A world folder (``augassets/world/<name>``) and its manifest."""

    folder: Path
    manifest: dict

    @classmethod
    def open(cls, name: str) -> ShippedWorld:
        """The world ``name``: a folder under ``augassets/world``, or a path to any world folder."""
        folder = world_folder(name)
        path = folder / MANIFEST
        if not path.is_file():
            raise ShippedWorldError(
                f"shipped world {name!r}: {path} is missing; train the world here with `{REBUILD_HINT}` "
                f"(or set MiniWorldSpec.shipped / AUGASSETS_WORLD=train)"
            )
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ShippedWorldError(
                f"shipped world {name!r}: {path} is not valid JSON ({error}); restore it from the repository"
            ) from None
        return cls(folder, manifest)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def entry(self, asset: str) -> dict:
        try:
            return self.manifest["assets"][asset]
        except KeyError:
            raise ShippedWorldError(
                f"shipped world {self.name!r} has no {asset!r} (its manifest lists "
                f"{', '.join(self.manifest.get('assets', {}))}); "
                f"train the world with `{REBUILD_HINT}`"
            ) from None

    def stale_versions(self, asset: str, versions: dict[str, str]) -> list[str]:
        """How the code versions that made ``asset`` differ from ``versions`` (asset → code version of
        the asset and everything upstream of it now): one line per difference; empty when they match."""
        recorded = self.entry(asset)["code_versions"]
        lines = []
        for key in sorted(set(recorded) | set(versions)):
            then, now = recorded.get(key), versions.get(key)
            if then != now:
                lines.append(f"{key}: shipped {then or '(absent)'}, now {now or '(absent)'}")
        return lines

    def check(self, asset: str, versions: dict[str, str]) -> None:
        """Raise unless ``asset`` is shipped, made by the same code versions, and its files are intact."""
        stale = self.stale_versions(asset, versions)
        if stale:
            raise ShippedWorldError(
                f"shipped world {self.name!r} is stale for {asset}: it was made by other definitions "
                f"({'; '.join(stale)}). "
                f"Either train the world here with `{REBUILD_HINT}` (then `{EXPORT_HINT}` ships it), or run the "
                f"commit that "
                f"made it ({self.manifest.get('commit', 'see the manifest')})"
            )
        self.verify(asset)

    def verify(self, asset: str) -> None:
        """Every file of ``asset`` exists with its recorded size and SHA-256."""
        for relpath, expected in self.entry(asset)["files"].items():
            path = self.folder / relpath
            if not path.is_file():
                raise ShippedWorldError(
                    f"shipped world {self.name!r}: {path} is missing; restore it (`git checkout -- {path}`) "
                    f"or train the world with `{REBUILD_HINT}`"
                )
            size = path.stat().st_size
            if size != expected["bytes"] or sha256_of(path) != expected["sha256"]:
                raise ShippedWorldError(
                    f"shipped world {self.name!r}: {path} is damaged (checksum mismatch, {size} bytes, "
                    f"manifest: {expected['bytes']}); restore it (`git checkout -- {path}`) or train the world "
                    f"with `{REBUILD_HINT}`"
                )

    def install(self, asset: str, versions: dict[str, str], destination: Path) -> dict:
        """Check ``asset`` and write its files into ``destination`` (a temporary folder the caller
        publishes), tensors back in float32. Returns the manifest's entry (its recorded figures)."""
        self.check(asset, versions)
        entry = self.entry(asset)
        for relpath in entry["files"]:
            source = self.folder / relpath
            target = destination / Path(relpath).relative_to(asset)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.suffix == ".safetensors":
                _write_tensors(source, target, "float32")
            else:
                shutil.copyfile(source, target)
        return entry


def _write_tensors(source: Path, target: Path, dtype: str) -> None:
    """Copy a safetensors file, floating-point tensors cast to ``dtype`` (other tensors and the
    file's metadata as they are)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        for name in handle.keys():  # noqa: SIM118 - safe_open has keys(), no iteration
            tensor = handle.get_tensor(name)
            tensors[name] = tensor.to(getattr(torch, dtype)) if tensor.is_floating_point() else tensor
    save_file(tensors, str(target), metadata=metadata)


# Files a model folder holds that its loader derives from the others: not shipped. ``tokenizer.json`` (3.5 MB)
# is the fast tokenizer transformers builds again from ``vocab.json`` and ``merges.txt``, token for token.
DERIVABLE_FILES = frozenset({"tokenizer.json"})


def export_asset(asset: str, files_root: Path, world_folder: Path, versions: dict[str, str], figures: dict) -> dict:
    """Copy an asset's model files (``files_root``: a folder, or one file; not ``DERIVABLE_FILES``) into
    ``world_folder/<asset>/``, tensors in ``STORED_DTYPE``; returns its manifest entry (files with sizes
    and checksums, the code versions that made it, its recorded figures)."""
    sources = (
        sorted(p for p in files_root.rglob("*") if p.is_file() and p.name not in DERIVABLE_FILES)
        if files_root.is_dir()
        else [files_root]
    )
    base = files_root if files_root.is_dir() else files_root.parent
    files = {}
    for source in sources:
        relpath = Path(asset) / source.relative_to(base)
        target = world_folder / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".safetensors":
            _write_tensors(source, target, STORED_DTYPE)
        else:
            shutil.copyfile(source, target)
        files[relpath.as_posix()] = {"sha256": sha256_of(target), "bytes": target.stat().st_size}
    return {"files": files, "code_versions": dict(sorted(versions.items())), "figures": figures}


def write_manifest(world_folder: Path, manifest: dict) -> None:
    """The manifest, written last (a folder without one is no world)."""
    from .files import write_bytes_atomic

    write_bytes_atomic((json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), world_folder / MANIFEST)
