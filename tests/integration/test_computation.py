"""The feature computation prepared once and run per batch (``Computation``).

Expected rows come from Spark running the user's SQL by itself over the good records,
or from pandas running the UDF: not from the computation's own code.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812

import fs_dagster as fs
from fs_dagster.engine.computation import Computation, EventRange, to_micros
from fs_dagster.engine.sources import ERROR_COLUMN, read_source, user_columns

pytestmark = pytest.mark.spark

SCHEMA = "user_id STRING, amount DOUBLE, ts TIMESTAMP"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _feature_set(name: str, source: fs.FileSource, transformation: object) -> fs.FeatureSet:
    def build() -> object:
        return transformation

    return fs.streaming.feature_set(
        name=name, key="user_id", data_sources=[source], timestamp_column_name="ts"
    )(build)  # type: ignore[arg-type]


def _source(tmp_path: Path) -> fs.FileSource:
    return fs.FileSource(
        name=f"ev_{uuid.uuid4().hex[:6]}", path=str(tmp_path / "unused"), schema=SCHEMA
    )


def _batch(
    spark: SparkSession, source: fs.FileSource, directory: Path, lines: list[str]
) -> DataFrame:
    """The records as a batch with the internal columns a stream's micro-batch has."""
    directory.mkdir(parents=True)
    (directory / "part.json").write_text("\n".join(lines) + "\n")
    at_directory = fs.FileSource(name=source.name, path=str(directory), schema=SCHEMA)
    return read_source(spark, at_directory, required_columns=["user_id", "ts"], streaming=False)


def _event(user: str | None, amount: float, ts: str) -> str:
    return json.dumps({"user_id": user, "amount": amount, "ts": ts})


def _sorted(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _rows(df: DataFrame) -> list[dict[str, object]]:
    return _sorted([r.asDict() for r in df.collect()])


def _spark_alone(spark: SparkSession, batch: DataFrame, view: str, sql: str) -> DataFrame:
    good = batch.where(F.col(ERROR_COLUMN).isNull()).select(*user_columns(batch))
    good.createOrReplaceTempView(view)
    return spark.sql(sql)


LINES = [
    _event("u1", 10.0, "2026-03-01T10:00:00Z"),
    _event("u2", -5.0, "2026-03-01T11:00:00Z"),
    _event("u1", 7.5, "2026-03-01T12:00:00Z"),
    "{not json",
    _event(None, 1.0, "2026-03-01T12:30:00Z"),
]


@pytest.mark.parametrize(
    "template",
    [
        "SELECT user_id, amount * 2 AS doubled, ts FROM {source}",
        "WITH big AS (SELECT * FROM {source} WHERE amount > 0)\n"
        "SELECT user_id, amount AS doubled, ts FROM big",
        "SELECT user_id, amount AS doubled, ts FROM {source};  ",
        "SELECT user_id, amount AS doubled, ts FROM {source} -- the last line is a comment",
    ],
    ids=["plain", "own-with", "semicolon", "comment"],
)
def test_sql_runs_as_one_statement_with_the_rows_spark_gives(
    spark: SparkSession, tmp_path: Path, template: str
) -> None:
    source = _source(tmp_path)
    sql = template.replace("{source}", source.name)
    fset = _feature_set("one-statement", source, fs.SparkSqlTransformation(sql))
    batch = _batch(spark, source, tmp_path / "b1", LINES)
    computation = Computation(fset, EventRange(None, None, ""), {source.name: batch}, cache=False)
    assert computation.single_statement
    computed = computation.run({source.name: batch})
    expected = _spark_alone(spark, batch, source.name, sql.rstrip().rstrip(";"))
    assert _rows(computed.features) == _rows(expected)
    assert computed.features.columns == expected.columns


def test_each_run_reads_its_own_batch(spark: SparkSession, tmp_path: Path) -> None:
    source = _source(tmp_path)
    sql = f"SELECT user_id, amount, ts FROM {source.name}"
    fset = _feature_set("own-batch", source, fs.SparkSqlTransformation(sql))
    first = _batch(spark, source, tmp_path / "b1", LINES[:2])
    second = _batch(spark, source, tmp_path / "b2", LINES[2:3])
    computation = Computation(fset, EventRange(None, None, ""), {source.name: first}, cache=False)
    one = computation.run({source.name: first})
    two = computation.run({source.name: second})
    # The first run's rows are bound when it runs: a later batch does not replace them.
    assert [r["amount"] for r in _rows(one.rows)] == [-5.0, 10.0]
    assert [r["amount"] for r in _rows(two.rows)] == [7.5]


@pytest.mark.parametrize("cache", [False, True], ids=["streamed", "cached"])
def test_rows_are_classified_and_counted(spark: SparkSession, tmp_path: Path, cache: bool) -> None:
    source = _source(tmp_path)
    # A negative amount loses its key in the SQL: an output row without a key.
    sql = (
        "SELECT CASE WHEN amount < 0 THEN NULL ELSE user_id END AS user_id, amount, ts "
        f"FROM {source.name}"
    )
    fset = _feature_set("classified", source, fs.SparkSqlTransformation(sql))
    batch = _batch(spark, source, tmp_path / "b1", LINES)
    start = to_micros(datetime(2026, 3, 1, 11, 30, tzinfo=UTC))
    owned = EventRange(start, None, "before the range")
    computation = Computation(fset, owned, {source.name: batch}, cache=cache)
    computed = computation.run({source.name: batch})
    # 5 records: one not JSON and one without user_id never reach the SQL.
    counts = computed.counts
    assert (counts.rows_in, counts.malformed) == (5, 2)
    assert counts.invalid == 1  # u2's -5.0
    assert counts.row_count == 1  # u1 at 12:00, inside the range
    assert counts.outside_count == 1  # u1 at 10:00, before 11:30
    noon = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert counts.max_event_micros == (noon - EPOCH) // pd.Timedelta(microseconds=1)
    assert [r["amount"] for r in _rows(computed.rows)] == [7.5]
    assert [r["amount"] for r in _rows(computed.outside)] == [10.0]
    assert [r["amount"] for r in _rows(computed.invalid_output)] == [-5.0]
    computed.release()


def test_pandas_udf_transformation_runs_through_dataframes(
    spark: SparkSession, tmp_path: Path
) -> None:
    @fs.pandas_udf(
        output_schema=fs.Schema(
            [
                fs.Column(name="user_id", type=fs.Type.string),
                fs.Column(name="ts", type=fs.Type.timestamp),
                fs.Column(name="cents", type=fs.Type.long),
            ]
        )
    )
    def cents(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user_id": frame["user_id"],
                "ts": frame["ts"],
                "cents": (frame["amount"] * 100).round().astype("int64"),
            }
        )

    source = _source(tmp_path)
    fset = _feature_set("udf", source, fs.UdfTransformation(cents))
    batch = _batch(spark, source, tmp_path / "b1", LINES)
    computation = Computation(fset, EventRange(None, None, ""), {source.name: batch}, cache=False)
    assert not computation.single_statement
    computed = computation.run({source.name: batch})
    assert sorted(r["cents"] for r in computed.rows.collect()) == [-500, 750, 1000]
    assert computed.counts.rows_in == 5
