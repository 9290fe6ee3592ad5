"""Writing many partitions of one table: ``python -m benchmarks.table_writes --partitions 2800``.

Each write replaces one method × class partition (one row, one Parquet file), as the class × method
assets do. ``--listing full`` restores the earlier behaviour (every file of the table listed on each
write) for comparison; the default lists only the folders that may hold the partition
(``Warehouse._files_that_may_hold``). Prints the elapsed seconds at each quarter of the writes.
"""

import argparse
import tempfile
import time

import polars as pl

from augassets.core.warehouse import Warehouse
from benchmarks.run import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=2800)
    parser.add_argument("--methods", type=int, default=14)
    parser.add_argument("--listing", choices=("pruned", "full"), default="pruned")
    args = parser.parse_args()
    if args.listing == "full":
        Warehouse._files_that_may_hold = lambda self, table, wanted: self.files(table)
    with tempfile.TemporaryDirectory() as root:
        db = Warehouse(root)
        started, marks = time.perf_counter(), []
        for i in range(args.partitions):
            method, wnid = f"method_{i % args.methods:02d}", f"n{i // args.methods:08d}"
            db.replace(
                "manifest",
                pl.DataFrame({"method": [method], "wnid": [wnid], "images": [1]}),
                where={"method": method, "wnid": wnid},
            )
            if (i + 1) % max(1, args.partitions // 4) == 0:
                marks.append(f"{i + 1:,}: {time.perf_counter() - started:.1f} s")
        rows = db.query("SELECT count(*) AS n FROM manifest")["n"][0]
    print(f"table writes ({args.listing} listing), {machine()}: " + "; ".join(marks) + f"; rows read back {rows:,}")


if __name__ == "__main__":
    main()
