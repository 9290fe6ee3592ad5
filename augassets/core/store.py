"""Where the study's files live: a local folder, or any fsspec URL mirrored through a local working copy.

Every stage reads and writes plain local paths (PIL, ``from_pretrained``, faiss and numpy all want
them). With a local root that is the whole story. With a URL root (``s3://bucket/augassets``,
``gcs://…``, ``memory://…`` — whatever fsspec speaks) the local folder is a working copy and the URL
is the durable store:

* ``publish(*parts)`` uploads a file or folder the stage has just finished writing. A folder is
  published under a manifest (relative path → size and SHA-1) that is written *last*: its old manifest
  is removed first, changed files are uploaded, files that are gone are deleted, and only then is the
  new manifest written. A crash mid-publish leaves a folder with no manifest, which ``fetch`` refuses.
  A single file (a checkpoint, a report) gets a ``.sha1`` sidecar the same way.
* ``fetch(*parts)`` makes a published file or folder present locally (a no-op when the working copy
  already matches the remote manifest). A folder is rebuilt next to the working copy, every download
  checked against the manifest, and renamed into place whole.
* ``ensure(paths)`` makes individual files named in a table (dataset splits, augmentation images, pool
  rows) present locally, downloading the missing ones.

Tables keep working-copy paths, so the catalog reads the same in both modes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .files import FILE_MODE, atomic_folder, write_bytes_atomic

MANIFESTS = ".manifests"  # under the working copy: the manifest last fetched or published per folder
MANIFEST_NAME = ".augassets-manifest.json"  # in the remote folder
SHA1_SUFFIX = ".sha1"  # beside a remote single file


@dataclass
class SyncStats:
    uploaded: int = 0
    downloaded: int = 0
    deleted: int = 0
    unchanged: int = 0


def sha1_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha1").hexdigest()


def folder_manifest(folder: Path) -> dict[str, dict]:
    """Relative path → {size, sha1} for every file under ``folder`` (sorted, so equal folders give equal bytes)."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        entries[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha1": sha1_file(path)}
    return entries


def redact(url: str) -> str:
    """``url`` without the user and password a URL may carry (``sftp://user:secret@host/…``), for logs,
    errors and metadata."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{path}"


def _manifest_bytes(entries: dict[str, dict]) -> bytes:
    return json.dumps({"files": entries}, sort_keys=True, indent=0).encode()


class Store:
    """A local folder (``root`` a path or ``file://`` URL) or an fsspec URL with a local working copy."""

    def __init__(self, root: str, cache_dir: str = ""):
        import fsspec

        protocol, _ = fsspec.core.split_protocol(root)
        self.root = root
        self.shown = redact(root)  # what logs, errors and metadata may show
        self.remote = protocol not in (None, "file", "local")
        if self.remote:
            if not cache_dir:
                raise ValueError(
                    f"image store {redact(root)} is a URL: set ImageStoreResource.cache_dir to a local folder "
                    f"for its working copy"
                )
            self.fs, self.base = fsspec.core.url_to_fs(root)
            self.base = self.base.rstrip("/")
            self.local_root = Path(cache_dir)
        else:
            self.fs, self.base = None, ""
            self.local_root = Path(root.removeprefix("file://"))

    # ---- naming ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """The local path of ``parts`` (the working copy for a URL store)."""
        return self.local_root.joinpath(*parts)

    def key(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def url(self, *parts: str) -> str:
        """Where ``parts`` lives durably: the remote URL, or the local path."""
        if not self.remote:
            return str(self.path(*parts))
        return "/".join([self.shown.rstrip("/"), *parts])

    def relative(self, path: str | Path) -> tuple[str, ...] | None:
        """``path``'s parts under the working copy, or None for a file outside the store. Lexical (no
        file-system calls): table paths are absolute paths under the same root."""
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.local_root)).parts
        except ValueError:
            return None

    def exists(self, *parts: str) -> bool:
        """Whether ``parts`` was written: the local path, or the published key of a URL store."""
        if not self.remote:
            return self.path(*parts).exists()
        return bool(self.fs.exists(self.key(*parts)))

    def _local_manifest(self, parts: tuple[str, ...]) -> Path:
        return self.local_root / MANIFESTS / Path(*parts).with_name(Path(*parts).name + ".json")

    @contextmanager
    def _lock(self, parts: tuple[str, ...]) -> Iterator[None]:
        """One process at a time publishes or fetches a given folder (Dagster runs steps in parallel)."""
        lock = self._local_manifest(parts).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- upload ---------------------------------------------------------------------------------
    def publish(self, *parts: str) -> SyncStats:
        """Upload the local file or folder ``parts`` to the remote store (no-op for a local store)."""
        stats = SyncStats()
        if not self.remote:
            return stats
        local = self.path(*parts)
        if local.is_file():
            # A single file's manifest is a ``.sha1`` sidecar, removed first and written last; the file
            # itself is uploaded beside its key and moved into place.
            key = self.key(*parts)
            if self.fs.exists(key + SHA1_SUFFIX):
                self.fs.rm_file(key + SHA1_SUFFIX)
            self._put_files([(local, key + ".partial")])
            self.fs.mv(key + ".partial", key)
            self.fs.pipe_file(key + SHA1_SUFFIX, sha1_file(local).encode())
            stats.uploaded = 1
            return stats
        if not local.is_dir():
            raise FileNotFoundError(f"cannot publish {local}: it does not exist (image store {self.shown})")
        key = self.key(*parts)
        with self._lock(parts):
            entries = folder_manifest(local)
            old = self._remote_manifest(key)
            if old is None:  # first publish, or a crashed one: trust nothing that is there
                old = {}
                stale = set(self._remote_files(key)) - set(entries)
            else:
                self.fs.rm_file(f"{key}/{MANIFEST_NAME}")
                stale = set(old) - set(entries)
            # Files go straight to their keys: until the new manifest is written the folder reads as
            # unfinished, and fetch checks each file against the manifest.
            changed = [rel for rel, entry in entries.items() if old.get(rel) != entry]
            self._put_files([(local / rel, f"{key}/{rel}") for rel in changed])
            stats.uploaded, stats.unchanged = len(changed), len(entries) - len(changed)
            for rel in sorted(stale):
                self.fs.rm_file(f"{key}/{rel}")
                stats.deleted += 1
            data = _manifest_bytes(entries)
            self.fs.pipe_file(f"{key}/{MANIFEST_NAME}", data)
            write_bytes_atomic(data, self._local_manifest(parts))
        return stats

    def _put_files(self, pairs: list[tuple[Path, str]]) -> None:
        """One batched put: asynchronous filesystems (s3fs, gcsfs, adlfs) send the files concurrently."""
        if not pairs:
            return
        for parent in sorted({key.rsplit("/", 1)[0] for _, key in pairs}):
            self.fs.makedirs(parent, exist_ok=True)  # a no-op on object stores
        self.fs.put([str(local) for local, _ in pairs], [key for _, key in pairs])

    def _remote_manifest(self, key: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(f"{key}/{MANIFEST_NAME}"))["files"]
        except FileNotFoundError:
            return None

    def _remote_files(self, key: str) -> list[str]:
        if not self.fs.exists(key):
            return []
        prefix = key.rstrip("/") + "/"
        return [p.removeprefix(prefix) for p in self.fs.find(key) if p.removeprefix(prefix) != MANIFEST_NAME]

    # ---- download -------------------------------------------------------------------------------
    def fetch(self, *parts: str) -> Path:
        """Make the published file or folder ``parts`` present locally and return its local path."""
        local = self.path(*parts)
        if not self.remote:
            return local
        key = self.key(*parts)
        manifest = self._remote_manifest(key)
        if manifest is None:
            if self.fs.isfile(key):
                return self._fetch_file(key, local, parts)
            if self.fs.exists(key):
                raise RuntimeError(
                    f"{self.url(*parts)} has no manifest: its publish did not finish; re-materialize the asset "
                    f"that writes it"
                )
            if local.exists():  # written here and not published yet
                return local
            raise FileNotFoundError(
                f"{self.url(*parts)} is not in the image store: materialize the asset that writes it"
            )
        data = _manifest_bytes(manifest)
        with self._lock(parts):
            recorded = self._local_manifest(parts)
            if local.is_dir() and recorded.exists() and recorded.read_bytes() == data:
                return local
            self._rebuild(key, local, manifest)
            write_bytes_atomic(data, recorded)
        return local

    def _rebuild(self, key: str, local: Path, manifest: dict[str, dict]) -> None:
        """Build the folder beside the working copy from local files that match the manifest and
        downloads of the rest, verify every file, then swap it into place (under the folder's lock)."""
        with atomic_folder(local) as tmp:
            missing = []
            for rel, entry in manifest.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                existing = local / rel
                if (
                    existing.is_file()
                    and existing.stat().st_size == entry["size"]
                    and sha1_file(existing) == entry["sha1"]
                ):
                    shutil.copy2(existing, target)
                else:
                    missing.append(rel)
            if missing:  # one batched get: concurrent on asynchronous filesystems
                self.fs.get([f"{key}/{rel}" for rel in missing], [str(tmp / rel) for rel in missing])
            for rel in missing:
                if sha1_file(tmp / rel) != manifest[rel]["sha1"]:
                    raise RuntimeError(
                        f"{key}/{rel} does not match its manifest (SHA-1): the remote folder changed mid-fetch; retry"
                    )

    def _fetch_file(self, key: str, local: Path, parts: tuple[str, ...]) -> Path:
        """A published single file: kept if the local copy has the sidecar's SHA-1, else downloaded,
        checked and renamed into place. (Checkpoints of one architecture all have the same size, so
        only the content can tell a stale copy.)"""
        try:
            expected = self.fs.cat_file(key + SHA1_SUFFIX).decode().strip()
        except FileNotFoundError:
            raise RuntimeError(
                f"{self.url(*parts)} has no {SHA1_SUFFIX} sidecar: its publish did not finish; re-materialize "
                f"the asset that writes it"
            ) from None
        if local.is_file() and sha1_file(local) == expected:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        try:
            self.fs.get_file(key, tmp)
            if sha1_file(Path(tmp)) != expected:
                raise RuntimeError(f"{key} does not match its {SHA1_SUFFIX} sidecar: it changed mid-fetch; retry")
            os.replace(tmp, local)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return local

    def ensure(self, paths: Iterable[str | Path]) -> SyncStats:
        """Download the files among ``paths`` that are under the store but missing locally. Paths outside
        the store (an ImageNet folder, say) are left alone; a missing one is reported by its reader."""
        stats = SyncStats()
        if not self.remote:
            return stats
        wanted = []
        for path in paths:
            path = Path(str(path).removeprefix("file://"))
            if path.is_file():
                stats.unchanged += 1
                continue
            parts = self.relative(path)
            if parts is not None:
                wanted.append((self.key(*parts), path, path.with_name(f".{path.name}.{os.getpid()}.fetch")))
        if not wanted:
            return stats
        for _, path, _ in wanted:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:  # one batched get: concurrent on asynchronous filesystems
                self.fs.get([key for key, _, _ in wanted], [str(tmp) for _, _, tmp in wanted])
            except FileNotFoundError:  # some are not in the store: their readers report them
                for key, _, tmp in wanted:
                    tmp.unlink(missing_ok=True)
                    if self.fs.isfile(key):
                        self.fs.get_file(key, str(tmp))
            for _, path, tmp in wanted:
                if tmp.exists():
                    os.replace(tmp, path)
                    stats.downloaded += 1
        finally:
            for _, _, tmp in wanted:
                tmp.unlink(missing_ok=True)
        return stats
