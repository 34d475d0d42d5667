"""Streaming checkpoints on a local disk go through java.nio, and still resume a query."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

pytestmark = pytest.mark.spark


def test_the_local_file_system_is_the_nio_one(spark: SparkSession) -> None:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    local = jvm.org.apache.hadoop.fs.FileSystem.get(
        jvm.java.net.URI("file:///"), spark.sparkContext._jsc.hadoopConfiguration()
    )
    assert local.getClass().getName() == "com.globalmentor.apache.hadoop.fs.BareLocalFileSystem"
    # Ingestion runs on a new session of the same context: it inherits the setting.
    manager = spark.newSession().conf.get("spark.sql.streaming.checkpointFileManagerClass")
    assert manager is not None and manager.endswith(".FileSystemBasedCheckpointFileManager")


def _run(spark: SparkSession, source: Path, checkpoint: Path, seen: list[int]) -> None:
    def body(batch: DataFrame, batch_id: int) -> None:
        seen.extend(row["n"] for row in batch.collect())

    stream = spark.readStream.schema("n INT").json(str(source))
    query = (
        stream.writeStream.option("checkpointLocation", str(checkpoint))
        .foreachBatch(body)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(120)


def test_a_query_resumes_from_its_local_checkpoint(spark: SparkSession, tmp_path: Path) -> None:
    source, checkpoint = tmp_path / "in", tmp_path / "checkpoint"
    source.mkdir()

    def write(name: str, numbers: range) -> None:
        (source / name).write_text("".join(f'{{"n": {n}}}\n' for n in numbers))

    write("a.json", range(0, 3))
    seen: list[int] = []
    _run(spark, source, checkpoint, seen)
    assert sorted(seen) == [0, 1, 2]
    write("b.json", range(3, 5))
    _run(spark, source, checkpoint, seen)
    assert sorted(seen) == [0, 1, 2, 3, 4]  # each file once: the second run resumed
    offsets = sorted(p.name for p in (checkpoint / "offsets").iterdir() if p.name.isdigit())
    commits = sorted(p.name for p in (checkpoint / "commits").iterdir() if p.name.isdigit())
    assert offsets == commits == ["0", "1"]
    mode = stat.S_IMODE((checkpoint / "commits" / "1").stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR  # the owner reads and writes it
