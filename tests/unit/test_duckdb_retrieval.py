"""Where the DuckDB offline engine reads from, and how the engine is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

import fs_dagster as fs
from fs_dagster.engine.duckdb_retrieval import delta_location, s3_settings_from_environment
from fs_dagster.engine.spark_session import S3Settings

pytestmark = pytest.mark.unit


def test_local_paths_and_file_urls_are_read_directly() -> None:
    assert delta_location("/data/offline/t").uri == "/data/offline/t"
    assert delta_location("relative/t").uri == "relative/t"
    local = delta_location("file:///data/offline/t")
    assert (local.uri, local.object_store, dict(local.storage_options)) == (
        "/data/offline/t",
        False,
        {},
    )


def test_s3a_maps_to_s3_with_the_spark_settings() -> None:
    settings = S3Settings(
        endpoint="http://127.0.0.1:9000", access_key="id", secret_key="key", region="eu-west-1"
    )
    location = delta_location("s3a://bucket/offline/t", settings)
    assert location.uri == "s3://bucket/offline/t"
    assert location.object_store
    assert dict(location.storage_options) == {
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "key",
    }
    assert "key" not in repr(location)
    aws = delta_location("s3://bucket/t", S3Settings(path_style=False))
    assert dict(aws.storage_options) == {
        "AWS_REGION": "us-east-1",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true",
    }


def test_s3_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FS_S3_ENDPOINT", "https://s3.example:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert s3_settings_from_environment() == S3Settings(
        endpoint="https://s3.example:9000", access_key="id", secret_key="key"
    )
    options = delta_location("s3a://b/t").storage_options
    assert options["AWS_ENDPOINT_URL"] == "https://s3.example:9000"
    assert options["AWS_ALLOW_HTTP"] == "false"


def test_other_schemes_are_refused_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"s3a:// .*offline_engine='spark'"):
        delta_location("gs://bucket/t")


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"offline_engine='duck' is not one of \['auto'"):
        fs.FeatureStore(
            online_store=fs.SqliteOnlineStore(tmp_path / "o.db"),
            offline_root=str(tmp_path),
            offline_engine="duck",  # type: ignore[arg-type]
        )
