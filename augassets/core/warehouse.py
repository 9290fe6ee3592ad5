"""The DuckDB catalog every table of the study lives in, read and written through polars.

DuckDB lets one process open the file at a time, so the Dagster layer puts every writer in the
``duckdb`` concurrency pool (limit 1), and a connection that finds the file locked by another process
(a step of another pool, the daemon's run beside a headless command, a reader) waits for it. Each
write replaces the rows of one partition inside a transaction: a crash leaves the previous rows,
never half of the new ones.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

LOCK_WAIT_S = 300.0  # how long a connection waits for another process's lock on the file


def is_lock_conflict(error: Exception) -> bool:
    """Whether DuckDB refused to open a file because another process holds it (not a damaged file)."""
    message = str(error).lower()
    return "could not set lock" in message or "conflicting lock" in message


class Warehouse:
    def __init__(self, path: str | Path, lock_wait_s: float = LOCK_WAIT_S):
        self.path = Path(path)
        self.lock_wait_s = lock_wait_s

    def open_connection(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """Connect, waiting while another process holds the file (DuckDB lets one process in at a
        time; each connection here lasts one read or one write, so waits are short). A lock held
        longer than ``lock_wait_s`` is an error naming the holder."""
        deadline, pause = time.monotonic() + self.lock_wait_s, 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as error:
                if not is_lock_conflict(error):
                    raise
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{self.path} stayed locked by another process for {self.lock_wait_s:.0f} s ({str(error).splitlines()[0]}): "
                        "stop the other augassets/dagster process writing this home, or wait for it"
                    ) from error
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 1.0)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no catalog database at {self.path}: materialize class_catalog first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self.open_connection(read_only)
        try:
            yield connection
        finally:
            connection.close()

    def replace(self, table: str, frame: pl.DataFrame, where: dict[str, Any] | None = None) -> int:
        """Replace the rows of ``table`` matching ``where`` (all rows when None) with ``frame``."""
        with self.connect() as con:
            con.register("incoming", frame.to_arrow())
            con.execute("BEGIN TRANSACTION")
            try:
                exists = con.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
                ).fetchone()[0]
                if not exists:
                    con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM incoming')
                elif where:
                    self._add_new_columns(con, table)
                    clause = " AND ".join(f'"{column}" = ?' for column in where)
                    con.execute(f'DELETE FROM "{table}" WHERE {clause}', list(where.values()))
                    con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM incoming')
                else:
                    con.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM incoming')
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("incoming")
        return frame.height

    @staticmethod
    def _add_new_columns(con: duckdb.DuckDBPyConnection, table: str) -> None:
        """A newer code version may write a column the table does not have yet: add it (older rows
        get NULL) so one partition can be rewritten without rewriting the others."""
        existing = {row[0] for row in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()}
        for name, dtype, *_ in con.execute("DESCRIBE SELECT * FROM incoming").fetchall():
            if name not in existing:
                con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {dtype}')

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self.connect(read_only=True) as con:
            return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())

    def has_table(self, table: str) -> bool:
        if not self.path.exists():
            return False
        with self.connect(read_only=True) as con:
            return bool(
                con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0]
            )
