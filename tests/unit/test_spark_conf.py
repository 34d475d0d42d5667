"""The Spark settings fs-dagster derives for local and cluster masters."""

from __future__ import annotations

from fs_dagster.engine.spark_session import SparkSettings, spark_conf

NIO_JAR = "/jars/hadoop-bare-naked-local-fs-0.1.0.jar"
JARS = ("/jars/delta-spark_4.2_2.13-4.4.0.jar", NIO_JAR)
CHECKPOINTS = "spark.sql.streaming.checkpointFileManagerClass"


def test_local_master_checkpoints_without_child_processes() -> None:
    conf = spark_conf(SparkSettings(master="local[2]", jars=JARS))
    assert conf[CHECKPOINTS].endswith(".FileSystemBasedCheckpointFileManager")
    assert conf["spark.hadoop.fs.file.impl"].endswith(".BareLocalFileSystem")
    # Hadoop loads it before spark.jars are added: it must be on the driver's class path.
    assert conf["spark.driver.extraClassPath"] == NIO_JAR
    assert conf["spark.jars"] == ",".join(JARS)


def test_without_the_nio_jar_only_the_checkpoint_writer_changes() -> None:
    conf = spark_conf(SparkSettings(master="local[*]", jars=JARS[:1]))
    assert CHECKPOINTS in conf
    assert "spark.hadoop.fs.file.impl" not in conf
    assert "spark.driver.extraClassPath" not in conf


def test_cluster_master_keeps_hadoop_defaults() -> None:
    conf = spark_conf(SparkSettings(master="spark://10.0.0.1:7077", jars=JARS))
    assert CHECKPOINTS not in conf
    assert "spark.hadoop.fs.file.impl" not in conf
    assert "spark.driver.extraClassPath" not in conf


def test_pyspark_records_no_call_sites() -> None:
    # Each recording costs Py4J round trips on every column built for a micro-batch.
    for master in ("local[2]", "spark://10.0.0.1:7077"):
        conf = spark_conf(SparkSettings(master=master))
        assert conf["spark.python.sql.dataFrameDebugging.enabled"] == "false"


def test_a_users_driver_class_path_is_kept_beside_ours() -> None:
    settings = SparkSettings(
        master="local[2]",
        jars=JARS,
        conf={"spark.driver.extraClassPath": "/opt/udfs.jar", CHECKPOINTS: "my.Manager"},
    )
    conf = spark_conf(settings)
    assert conf["spark.driver.extraClassPath"].split(":") == [NIO_JAR, "/opt/udfs.jar"]
    assert conf[CHECKPOINTS] == "my.Manager"  # the user's settings win
