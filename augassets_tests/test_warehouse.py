"""The tables: one Parquet file per partition, written by many processes at once, queried by DuckDB."""

import os
import signal
import subprocess
import sys
import time

import duckdb
import polars as pl
import pytest

from augassets.core.warehouse import Warehouse, migrate_catalog


def test_a_partition_write_replaces_only_that_partition_and_a_failed_write_changes_nothing(tmp_path):
    db = Warehouse(tmp_path / "tables")
    db.replace("scores", pl.DataFrame({"method": ["a"], "v": [1.0]}), where={"method": "a"})
    db.replace("scores", pl.DataFrame({"method": ["b"], "v": [2.0]}), where={"method": "b"})
    db.replace("scores", pl.DataFrame({"method": ["a", "a"], "v": [3.0, 4.0]}), where={"method": "a"})
    assert db.query("SELECT * FROM scores ORDER BY method, v").rows() == [("a", 3.0), ("a", 4.0), ("b", 2.0)]
    assert sorted(os.path.relpath(p, tmp_path) for p in db.files("scores")) == [
        "tables/scores/method=a/part.parquet",
        "tables/scores/method=b/part.parquet",
    ]
    with pytest.raises(
        pl.exceptions.PolarsError
    ):  # an object column cannot be written as Parquet: the old file stays, no temporary is left
        db.replace(
            "scores",
            pl.DataFrame({"method": ["a"], "v": [object()]}, schema={"method": pl.Utf8, "v": pl.Object}),
            where={"method": "a"},
        )
    assert db.query("SELECT * FROM scores ORDER BY method, v").rows() == [("a", 3.0), ("a", 4.0), ("b", 2.0)]
    assert not list((tmp_path / "tables").rglob("*.tmp"))
    assert db.has_table("scores") and not db.has_table("other") and db.tables() == ["scores"]
    with pytest.raises(duckdb.CatalogException, match="other"):
        db.query("SELECT * FROM other")


def test_a_newer_column_reads_as_null_in_older_partitions(tmp_path):
    db = Warehouse(tmp_path / "tables")
    db.replace("prompts", pl.DataFrame({"method": ["a"], "prompt": ["x"]}), where={"method": "a"})
    db.replace("prompts", pl.DataFrame({"method": ["b"], "prompt": ["y"]}), where={"method": "b"})
    db.replace(
        "prompts", pl.DataFrame({"method": ["a"], "prompt": ["x2"], "source": ["img.png"]}), where={"method": "a"}
    )
    assert db.query("SELECT * FROM prompts ORDER BY method").rows() == [("a", "x2", "img.png"), ("b", "y", None)]


def test_writes_of_another_granularity_replace_the_rows_they_cover(tmp_path):
    """A whole-table write removes every partition file; a partition write over a table once written
    whole rewrites that file without the partition's rows; a coarser partition removes finer ones."""
    db = Warehouse(tmp_path / "tables")
    db.replace("t", pl.DataFrame({"method": ["a", "a", "b"], "wnid": ["x", "y", "x"], "v": [1, 2, 3]}))
    db.replace("t", pl.DataFrame({"method": ["a"], "wnid": ["x"], "v": [10]}), where={"method": "a", "wnid": "x"})
    assert db.query("SELECT * FROM t ORDER BY method, wnid").rows() == [("a", "x", 10), ("a", "y", 2), ("b", "x", 3)]
    db.replace("t", pl.DataFrame({"method": ["a"], "wnid": ["z"], "v": [20]}), where={"method": "a"})
    assert db.query("SELECT * FROM t ORDER BY method, wnid").rows() == [("a", "z", 20), ("b", "x", 3)]
    db.replace("t", pl.DataFrame({"method": ["c"], "wnid": ["x"], "v": [30]}))
    assert db.query("SELECT * FROM t").rows() == [("c", "x", 30)] and len(db.files("t")) == 1


_WRITER = """
import sys
import polars as pl
from augassets.core.warehouse import Warehouse
db = Warehouse(sys.argv[1])
for i in range(30):
    db.replace("t", pl.DataFrame({"who": [sys.argv[2]] * 50, "i": [i] * 50, "row": list(range(50))}),
    where={"who": sys.argv[2], "i": i})
    db.query("SELECT count(*) FROM t")
"""


def test_processes_write_partitions_of_one_table_at_once_without_a_lock(tmp_path):
    """Four processes write 30 partitions each of one table at once, reading it between writes:
    no lock error, every row present (with one DuckDB file, a second writer process used to fail)."""
    root = tmp_path / "tables"
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(root), who], stderr=subprocess.PIPE, text=True)
        for who in "abcd"
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
    rows = Warehouse(root).query(
        "SELECT who, count(*) AS n, count(DISTINCT i) AS parts FROM t GROUP BY who ORDER BY who"
    )
    assert rows.rows() == [(who, 1500, 30) for who in "abcd"]


_KILLED_WRITER = """
import os, sys, time
import polars as pl
from augassets.core import warehouse
real_fsync = os.fsync
def fsync_then_hang(fd):
    real_fsync(fd)
    print("written, not yet published", flush=True)
    time.sleep(600)
warehouse.os.fsync = fsync_then_hang
db = warehouse.Warehouse(sys.argv[1])
db.replace("t", pl.DataFrame({"method": ["a"] * 1000, "v": ["new"] * 1000}), where={"method": "a"})
"""


def test_a_writer_killed_mid_write_leaves_the_previous_rows(tmp_path):
    """kill -9 of a real writer after it wrote its new file and before it published it: readers see
    the partition's previous rows, all of them, and none of the new."""
    root = tmp_path / "tables"
    db = Warehouse(root)
    db.replace("t", pl.DataFrame({"method": ["a"] * 3, "v": ["old"] * 3}), where={"method": "a"})
    db.replace("t", pl.DataFrame({"method": ["b"], "v": ["other"]}), where={"method": "b"})
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written, not yet published"
        assert list((root / "t" / "method=a").glob("*.tmp")), "the new rows are on disk, unpublished"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert db.query("SELECT method, v, count(*) FROM t GROUP BY ALL ORDER BY method").rows() == [
        ("a", "old", 3),
        ("b", "other", 1),
    ]


def test_a_truncated_table_file_is_named_and_moved_aside(tmp_path):
    db = Warehouse(tmp_path / "tables")
    for method in "ab":
        db.replace("t", pl.DataFrame({"method": [method], "v": [1]}), where={"method": method})
    damaged = tmp_path / "tables" / "t" / "method=b" / "part.parquet"
    damaged.write_bytes(damaged.read_bytes()[:40])
    with pytest.raises(OSError, match=r"method=b/part.parquet.*a table file is missing or damaged"):
        db.query("SELECT * FROM t")
    found = db.check_files()
    assert (
        len(found) == 1
        and found[0].startswith(f"{damaged} (no Parquet magic bytes")
        and found[0].endswith("moved to part.parquet.damaged")
    )
    assert db.query("SELECT method FROM t").rows() == [("a",)], "the other partitions still read"
    assert db.check_files() == []


def test_tables_on_an_fsspec_url(tmp_path):
    """An object-store root (fsspec's memory filesystem here): the same writes and queries."""
    db = Warehouse(f"memory://tables-{time.time_ns()}")
    db.replace("t", pl.DataFrame({"method": ["a"], "v": [1]}), where={"method": "a"})
    db.replace("t", pl.DataFrame({"method": ["b"], "v": [2]}), where={"method": "b"})
    db.replace("t", pl.DataFrame({"method": ["a"], "v": [3]}), where={"method": "a"})
    assert db.query("SELECT * FROM t ORDER BY method").rows() == [("a", 3), ("b", 2)]
    assert db.tables() == ["t"] and len(db.files("t")) == 2
    views = db.write_views(tmp_path / "catalog.duckdb")
    with duckdb.connect(str(views)) as connection:
        connection.register_filesystem(db.fs)
        assert connection.execute("SELECT sum(v) FROM t").fetchone() == (5,)


def test_a_catalog_of_earlier_versions_becomes_partition_files_and_views(tmp_path):
    """A home whose tables live in one DuckDB file: each table is split by its partition columns,
    then the file holds views only; deleting it loses nothing."""
    catalog = tmp_path / "catalog.duckdb"
    with duckdb.connect(str(catalog)) as connection:
        connection.execute(
            "CREATE TABLE scores AS SELECT * FROM (VALUES ('a', 0, 0.5), ('a', 1, 0.6), ('b', 0, 0.7)) "
            "v(method, replicate, top1)"
        )
        connection.execute("CREATE TABLE catalog AS SELECT * FROM (VALUES ('n1', 0)) v(wnid_text, label)")
    db = Warehouse(tmp_path / "tables")
    assert sorted(migrate_catalog(catalog, db)) == ["catalog", "scores"]
    assert len(db.files("scores")) == 3 and len(db.files("catalog")) == 1
    db.replace(
        "scores",
        pl.DataFrame({"method": ["a"], "replicate": [1], "top1": [0.9]}),
        where={"method": "a", "replicate": 1},
    )
    assert db.query("SELECT * FROM scores ORDER BY method, replicate").rows() == [
        ("a", 0, 0.5),
        ("a", 1, 0.9),
        ("b", 0, 0.7),
    ]
    assert migrate_catalog(catalog, db) == [], "views only now"
    with duckdb.connect(str(catalog), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM scores").fetchone() == (3,)
    catalog.unlink()
    assert db.query("SELECT count(*) AS n FROM scores")["n"][0] == 3


def test_a_write_looks_only_at_the_files_that_may_hold_its_partition(tmp_path):
    """Replacing one partition reads the folders of that partition and of coarser files only, never
    the other partitions' (listing the whole table per write made N writes cost O(N²))."""
    db = Warehouse(str(tmp_path))
    db.replace(
        "t", pl.DataFrame({"method": ["c"], "wnid": ["n9"], "x": [1]})
    )  # a coarser file: the table once written whole
    for method in ("a", "b"):
        for wnid in ("n1", "n2"):
            db.replace(
                "t",
                pl.DataFrame({"method": [method], "wnid": [wnid], "x": [1]}),
                where={"method": method, "wnid": wnid},
            )

    def relative(where):
        return [path[len(db.folder("t")) + 1 :] for path in db._files_that_may_hold("t", where)]

    assert relative({"method": "a", "wnid": "n2"}) == ["method=a/wnid=n2/part.parquet", "part.parquet"]
    assert relative({"method": "b"}) == [
        "method=b/wnid=n1/part.parquet",
        "method=b/wnid=n2/part.parquet",
        "part.parquet",
    ]
    assert len(relative({})) == 5
    assert db.query("SELECT count(*) AS n FROM t")["n"][0] == 5  # the coarse file kept c's row; each partition one row


def test_published_files_get_the_mode_of_a_plain_write_not_a_private_one(tmp_path):
    """Tables, images and reports are written through a temporary file, which mkstemp makes 0600; the
    published file must be as readable as one open() would have made (0644 under umask 022)."""
    import stat

    from augassets.core.files import write_bytes_atomic

    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    Warehouse(tmp_path / "tables").replace("report", pl.DataFrame({"a": [1]}))
    write_bytes_atomic(b"<html></html>", tmp_path / "reports" / "report.html")
    written = [tmp_path / "reports" / "report.html", *(tmp_path / "tables").rglob("*.parquet")]
    assert len(written) == 2
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode), path
