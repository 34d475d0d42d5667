"""Merchant activity, chained on ``user-transactions``' sink topic (Kafka only).

``user-transactions`` publishes each feature row to ``user-transactions-features`` as
JFrog ML's sink message; this feature set reads that topic and aggregates per merchant.
Without Kafka (the embedded default) there is no sink, so neither is defined.
"""

from __future__ import annotations

import fs_dagster as fs
from jobs.transactions import FEATURES_TOPIC
from resources import project_settings

#: The sink message, as ``KafkaSink`` writes it.
MESSAGE_SCHEMA = (
    "featureset_name STRING, featureset_id STRING, timestamp TIMESTAMP, "
    "key STRUCT<user_id: STRING>, "
    "features STRUCT<amount: DOUBLE, is_high_value: BOOLEAN, merchant: STRING>"
)

_settings = project_settings()
CHAINED: list[fs.FeatureSet] = []

if _settings.kafka_bootstrap_servers:
    user_transaction_features = fs.KafkaSource(
        name="user-transaction-features",
        bootstrap_servers=_settings.kafka_bootstrap_servers,
        topic=FEATURES_TOPIC,
        schema=MESSAGE_SCHEMA,
    )

    @fs.streaming.feature_set(
        name="merchant-activity",
        key="merchant",
        data_sources=["user-transaction-features"],
        timestamp_column_name="ts",
        offline_scheduling_policy="*/10 * * * *",
        online_trigger_interval=5,
    )
    @fs.streaming.metadata(
        owner="risk-team",
        description="Spend and high-value purchases per merchant, from user-transactions.",
    )
    def merchant_activity() -> fs.SparkSqlTransformation:
        """Per merchant: spend, purchases and high-value purchases over 1 hour and 1 day."""
        return (
            fs.SparkSqlTransformation(
                """
                SELECT features.merchant AS merchant,
                       features.amount AS amount,
                       features.is_high_value AS is_high_value,
                       timestamp AS ts
                FROM user_transaction_features
                WHERE featureset_name = 'user-transactions'
                """
            )
            .aggregate(fs.Aggregation.sum("amount"))
            .aggregate(fs.Aggregation.count("amount"))
            .aggregate(fs.Aggregation.boolean_or("is_high_value"))
            .by_windows("1 hour", "1 day")
        )

    CHAINED.append(merchant_activity)
