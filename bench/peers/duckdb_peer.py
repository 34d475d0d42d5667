"""Raw DuckDB ``ASOF LEFT JOIN`` over the bench's Parquet, to a pandas DataFrame.

Runs under the Feast environment's interpreter (DuckDB comes with ``feast[duckdb]``; see
:mod:`bench.peers`). For each population row, the latest feature row of its ``user_id``
at or before its ``event_timestamp`` (no TTL), or nulls: the floor a point-in-time read
of these files can reach on this machine. Writes ``row_id, amount, is_remote`` to
``--out`` and prints the timing and row counts.

Example:
    bench/.peers/feast/bin/python bench/peers/duckdb_peer.py --features f.parquet \\
        --population p.parquet --out /tmp/out.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "PEER-RESULT "


def asof(features: Path, population: Path, out: Path, threads: int) -> dict[str, Any]:
    import duckdb

    connection = duckdb.connect(config={"threads": threads})
    query = f"""
        SELECT p.row_id, p.user_id, p.event_timestamp, f.amount, f.is_remote
        FROM read_parquet('{population}') AS p
        ASOF LEFT JOIN read_parquet('{features}') AS f
          ON p.user_id = f.user_id AND p.event_timestamp >= f.event_time
    """
    began = time.perf_counter()
    result = connection.execute(query).df()
    seconds = time.perf_counter() - began
    result[["row_id", "amount", "is_remote"]].to_parquet(out, index=False)
    return {
        "seconds": seconds,
        "rows": len(result),
        "distinct_row_ids": int(result["row_id"].nunique()),
        "matched_rows": int(result["amount"].notna().sum()),
        "duckdb": duckdb.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--population", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    result = asof(args.features, args.population, args.out, args.threads)
    result["load_average_after"] = os.getloadavg()[0]
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
