"""The study's tables: one Parquet file per written partition, queried with DuckDB.

Layout under the root (a local folder or an fsspec URL; by default the image store's ``tables/``)::

    <table>/<column>=<value>/…/part.parquet   the rows of one partition (the ``where`` of its write)
    <table>/part.parquet                      a table written whole

Every write replaces one file atomically (a local temporary file renamed over it; on an object store
one PUT), so any number of processes, on any number of machines, write different partitions at the
same time without a lock, and a writer killed mid-write leaves the partition's previous file. A
reader sees a table as the union of its files (``read_parquet(…, union_by_name)``): a column that a
newer code version writes reads as NULL in older files, so one partition can be rewritten without
rewriting the others. The partition columns are stored in the rows themselves; the folder names
only say which file holds which partition.

The files are the state: :meth:`Warehouse.write_views` writes ``catalog.duckdb``, a file of views over
them for the DuckDB CLI, and deleting it loses nothing. :func:`migrate_catalog` turns the tables of a
catalog written by earlier versions (one DuckDB file, one writer) into whole-table files.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import duckdb
import polars as pl

PART = "part.parquet"
DAMAGED_SUFFIX = ".damaged"  # a file moved aside by check_files (no longer matched by *.parquet)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _encode(value: Any) -> str:
    return quote(str(value), safe="")


def _is_url(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


class Warehouse:
    """Read and write the study's tables (polars frames) under ``root``."""

    def __init__(self, root: str | Path):
        root = str(root)
        self.remote = _is_url(root)
        if self.remote:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(root)
            self.protocol = root.split("://", 1)[0]
        else:
            self.fs, self.root, self.protocol = None, str(Path(root.removeprefix("file://")).resolve()), "file"

    def __repr__(self) -> str:
        return f"Warehouse({self.url(self.root)!r})"

    # Paths ------------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """``path`` as DuckDB and users name it (the protocol added for a remote root)."""
        return f"{self.protocol}://{path}" if self.remote else path

    def folder(self, table: str, where: dict[str, Any] | None = None) -> str:
        """The folder of ``table``'s partition ``where`` (the columns in sorted order)."""
        parts = [self.root, table, *(f"{column}={_encode(value)}" for column, value in sorted((where or {}).items()))]
        return "/".join(parts)

    @staticmethod
    def where_of(table_folder: str, path: str) -> dict[str, str]:
        """The partition a file holds, from its folder names (values as text)."""
        relative = path[len(table_folder) + 1 :].split("/")[:-1]
        return dict((part.split("=", 1)[0], unquote(part.split("=", 1)[1])) for part in relative if "=" in part)

    def files(self, table: str) -> list[str]:
        """Every Parquet file of ``table`` (none: the table does not exist)."""
        top = self.folder(table)
        if self.remote:
            return sorted(p for p in self.fs.find(top) if p.endswith(".parquet")) if self.fs.exists(top) else []
        if not os.path.isdir(top):
            return []
        return sorted(str(p) for p in Path(top).rglob("*.parquet"))

    def _files_that_may_hold(self, table: str, wanted: dict[str, str]) -> list[str]:
        """The Parquet files of ``table`` that may hold rows of partition ``wanted`` (encoded values):
        a walk of its folders that skips every ``column=value`` folder whose column is in ``wanted``
        with another value. Listing the whole table on every write made writing N partitions cost
        O(N²) (14,000 partitions: hours); this visits one branch per partition column."""
        top = self.folder(table)
        found, pending = [], [top]
        while pending:
            folder = pending.pop()
            if self.remote:
                if not self.fs.exists(folder):
                    continue
                entries = [
                    (e["name"].rstrip("/").rsplit("/", 1)[-1], e["name"].rstrip("/"), e["type"] == "directory")
                    for e in self.fs.ls(folder, detail=True)
                ]
            else:
                try:
                    entries = [(e.name, f"{folder}/{e.name}", e.is_dir()) for e in os.scandir(folder)]
                except (FileNotFoundError, NotADirectoryError):
                    continue
            for name, path, is_folder in entries:
                if is_folder:
                    column, equals, value = name.partition("=")
                    if not (equals and column in wanted and unquote(value) != unquote(wanted[column])):
                        pending.append(path)
                elif name.endswith(".parquet"):
                    found.append(path)
        return sorted(found)

    def tables(self) -> list[str]:
        """The names of the tables that have at least one file."""
        if self.remote:
            names = (
                [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
                if self.fs.exists(self.root)
                else []
            )
        else:
            names = sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []
        return [name for name in names if self.files(name)]

    def has_table(self, table: str) -> bool:
        return bool(self.files(table))

    # Writing ----------------------------------------------------------------------------------

    def _write(self, frame: pl.DataFrame, path: str) -> None:
        """Write ``frame`` to ``path`` so that readers see the old file or the whole new one."""
        if self.remote:
            import io

            buffer = io.BytesIO()
            frame.write_parquet(buffer)
            self.fs.pipe_file(path, buffer.getvalue())  # one PUT: the object store shows the old object or the new one
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        temporary = f"{path}.{uuid.uuid4().hex}.tmp"  # not *.parquet: never read as part of the table
        try:
            frame.write_parquet(temporary)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _remove(self, path: str) -> None:
        if self.remote:
            self.fs.rm(path)
        else:
            Path(path).unlink(missing_ok=True)

    def _read(self, path: str) -> pl.DataFrame:
        if self.remote:
            with self.fs.open(path, "rb") as handle:
                return pl.read_parquet(handle)
        return pl.read_parquet(path)

    def replace(self, table: str, frame: pl.DataFrame, where: dict[str, Any] | None = None) -> int:
        """Replace the rows of ``table`` matching ``where`` (all rows when None) with ``frame``.

        The partition's file is replaced atomically. Files of finer partitions inside ``where`` (an
        earlier writer's granularity) are removed after it; a coarser file that also holds these rows
        (a table once written whole) is rewritten without them."""
        where = dict(where or {})
        top, target = self.folder(table), f"{self.folder(table, where)}/{PART}"
        self._write(frame, target)
        wanted = {column: _encode(value) for column, value in where.items()}
        for path in self._files_that_may_hold(table, wanted):
            if path == target:
                continue
            held = {column: _encode(value) for column, value in self.where_of(top, path).items()}
            if all(held.get(column) == value for column, value in wanted.items()):
                self._remove(path)  # inside this partition: replaced by the new file
            elif all(wanted.get(column) == value for column, value in held.items()):
                # A coarser file holding these rows among others. Not safe against a second writer
                # rewriting the same file at once; the project's writers never mix granularities.
                old = self._read(path)
                keep = old.filter(~pl.all_horizontal([pl.col(c).cast(pl.Utf8) == str(v) for c, v in where.items()]))
                if not keep.height:
                    self._remove(path)
                elif keep.height != old.height:
                    self._write(keep, path)
        return frame.height

    # Reading ----------------------------------------------------------------------------------

    def glob(self, table: str) -> str:
        return self.url(f"{self.folder(table)}/**/*.parquet")

    def connection(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection that can read the root (fsspec registered for a URL)."""
        connection = duckdb.connect()
        if self.remote:
            connection.register_filesystem(self.fs)
        return connection

    def view_sql(self, table: str) -> str:
        path = self.glob(table).replace("'", "''")
        return (
            f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM '
            f"read_parquet('{path}', union_by_name = true, hive_partitioning = false)"
        )

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        """Run ``sql`` over the tables it names (each a view over its files)."""
        connection = self.connection()
        try:
            for table in sorted(set(_WORD.findall(sql))):
                if self.has_table(table):
                    connection.execute(self.view_sql(table))
            return pl.from_arrow(connection.sql(sql, params=params or None).to_arrow_table())
        except (duckdb.IOException, duckdb.InvalidInputException) as error:
            if ".parquet" not in str(error):
                raise
            first = str(error).splitlines()[0]
            raise OSError(
                f"{first}: a table file is missing or damaged; `augassets benchmark` moves it aside and "
                f"rebuilds what wrote it"
            ) from error
        finally:
            connection.close()

    def write_views(self, path: str | Path) -> Path:
        """``path`` (``catalog.duckdb``): a DuckDB file of one view per table, for the DuckDB CLI
        (``duckdb catalog.duckdb``). Rebuilt from the files; deleting it loses nothing."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with duckdb.connect(str(temporary)) as connection:
                if self.remote:
                    connection.register_filesystem(self.fs)
                for table in self.tables():
                    connection.execute(self.view_sql(table))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return path

    def check_files(self) -> list[str]:
        """Find table files that are not whole Parquet files (a writer of an older version cut short,
        a disk that filled, a hand edit), move each aside (``….damaged``) and say which: their
        partitions then read as missing and the assets that write them are rebuilt. Local roots only
        (on an object store a file is whole or absent)."""
        if self.remote:
            return []
        found = []
        for table in self.tables():
            for path in self.files(table):
                problem = parquet_problem(path)
                if problem:
                    os.replace(path, path + DAMAGED_SUFFIX)
                    found.append(f"{path} ({problem}); moved to {Path(path).name}{DAMAGED_SUFFIX}")
        return found


def parquet_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a whole Parquet file (None: its magic bytes and footer length are sound)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(4)
            if size < 12:
                return f"{size} bytes, too short"
            handle.seek(size - 8)
            footer, tail = int.from_bytes(handle.read(4), "little"), handle.read(4)
    except OSError as error:
        return str(error)
    if head != b"PAR1" or tail != b"PAR1":
        return "no Parquet magic bytes: truncated or not Parquet"
    if footer + 12 > size:
        return f"footer of {footer} bytes in a {size}-byte file: truncated"
    return None


MIGRATION_COLUMNS = ("method", "wnid", "replicate")  # every partition column a writer names in ``where``


def migrate_catalog(catalog: Path, warehouse: Warehouse) -> list[str]:
    """Tables of a ``catalog.duckdb`` written by earlier versions (base tables, not views) as files of
    ``warehouse``, unless the table already has files there. Each is split by the partition columns
    it has (``MIGRATION_COLUMNS``), the finest any writer uses, so a later write only ever removes
    whole files. Returns the tables moved; the catalog is then rewritten as views."""
    if not catalog.is_file():
        return []
    with duckdb.connect(str(catalog), read_only=True) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        moved = []
        for table in tables:
            if warehouse.has_table(table):
                continue
            frame = pl.from_arrow(connection.sql(f'SELECT * FROM "{table}"').to_arrow_table())
            columns = [c for c in MIGRATION_COLUMNS if c in frame.columns]
            parts = frame.group_by(columns, maintain_order=True) if columns and not frame.is_empty() else [((), frame)]
            for values, part in parts:  # the table has no files yet: each partition's file is simply written
                warehouse._write(part, f"{warehouse.folder(table, dict(zip(columns, values)))}/{PART}")
            moved.append(table)
    if tables:
        warehouse.write_views(catalog)
    return moved
