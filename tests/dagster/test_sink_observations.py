"""What a run reports of its sinks: messages written and the last write, per sink asset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import AssetKey

import fs_dagster as fs
from fs_dagster.engine.pipeline import BatchReport
from fs_dagster.orchestration.sinks import sink_observations
from tests.integration.scenario import SourceSpec, transactions_feature_set

pytestmark = [pytest.mark.dagster]

START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _report(batch_id: int, sink_messages: dict[str, int]) -> BatchReport:
    return BatchReport(
        pipeline="online",
        batch_id=batch_id,
        rows_in=10,
        rows_valid=10,
        rows_written=10,
        dead_letters=0,
        max_event_time=None,
        freshness_seconds=None,
        duration_seconds=0.5,
        finished_at=START + timedelta(seconds=batch_id),
        sink_messages=sink_messages,
    )


def test_each_sink_of_the_pipeline_gets_its_counts(tmp_path: Path) -> None:
    sinks = [
        fs.KafkaSink(name="live", topic="a", bootstrap_servers="127.0.0.1:9092"),
        fs.KafkaSink(name="quiet", topic="b", bootstrap_servers="127.0.0.1:9092"),
        fs.KafkaSink(
            name="later",
            topic="c",
            bootstrap_servers="127.0.0.1:9092",
            attachment_point=fs.OfflineStreamingAttachmentPoint(),
        ),
    ]
    feature_set = transactions_feature_set(
        SourceSpec("file", "obs_events", str(tmp_path)), "obs-set", auxiliary_sinks=sinks
    )
    reports = [
        _report(0, {"live": 7, "quiet": 0}),
        _report(1, {"live": 3, "quiet": 0}),
        _report(2, {"live": 0, "quiet": 0}),
    ]
    observations = {o.asset_key: o for o in sink_observations(feature_set, "online", reports)}
    # Only the online-attached sinks: the offline one is the offline run's to report.
    assert set(observations) == {
        AssetKey(["obs_set", "sinks", "live"]),
        AssetKey(["obs_set", "sinks", "quiet"]),
    }
    live = observations[AssetKey(["obs_set", "sinks", "live"])].metadata
    assert live["fs_dagster/messages_written"].value == 10
    assert live["fs_dagster/batches"].value == 3
    assert live["fs_dagster/last_write"].value == (START + timedelta(seconds=1)).timestamp()
    quiet = observations[AssetKey(["obs_set", "sinks", "quiet"])].metadata
    assert quiet["fs_dagster/messages_written"].value == 0
    assert "fs_dagster/last_write" not in quiet
    assert sink_observations(feature_set, "online", []) == []
