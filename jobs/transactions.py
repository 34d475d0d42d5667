"""Card transactions: the example stream and a row-level feature set over it.

The source is Kafka when ``FS_KAFKA_BOOTSTRAP_SERVERS`` is set, and otherwise a directory
of JSON files that ``jobs.generator`` fills (the embedded default).
"""

from __future__ import annotations

import pandas as pd

import fs_dagster as fs
from resources import project_settings

SCHEMA = "user_id STRING, amount DOUBLE, merchant STRING, is_remote BOOLEAN, ts TIMESTAMP"
TOPIC = "transactions"
#: Where ``user-transactions`` publishes its features (with Kafka), read by ``jobs.merchants``.
FEATURES_TOPIC = "user-transactions-features"

_settings = project_settings()
transactions: fs.KafkaSource | fs.FileSource
if _settings.kafka_bootstrap_servers:
    transactions = fs.KafkaSource(
        name="transactions",
        bootstrap_servers=_settings.kafka_bootstrap_servers,
        topic=TOPIC,
        schema=SCHEMA,
    )
else:
    transactions = fs.FileSource(
        name="transactions", path=str(_settings.stream_dir / TOPIC), format="json", schema=SCHEMA
    )


@fs.pandas_udf(output_schema=fs.Schema([fs.Column(name="amount_cents", type=fs.Type.long)]))
def amount_cents(amount: pd.Series) -> pd.Series:
    """Amount in whole cents, so that sums of features stay exact."""
    return (amount * 100).round().astype("int64")


# With Kafka, every feature row is also published to a topic that another feature set
# reads (jobs/merchants.py): a chain the asset graph shows. Files have no sink.
feature_sinks = (
    [
        fs.KafkaSink(
            name="features_topic",
            topic=FEATURES_TOPIC,
            bootstrap_servers=_settings.kafka_bootstrap_servers,
            message_format=fs.MessageFormat.JSON,
            attachment_point=fs.OnlineStreamingAttachmentPoint(),
        )
    ]
    if _settings.kafka_bootstrap_servers
    else []
)


@fs.streaming.feature_set(
    name="user-transactions",
    key="user_id",
    data_sources=["transactions"],
    timestamp_column_name="ts",
    offline_scheduling_policy="*/10 * * * *",
    online_trigger_interval=5,
    online_ttl="30 days",
    auxiliary_sinks=feature_sinks,
)
@fs.streaming.metadata(
    owner="risk-team",
    description="The latest card transaction of each user, for fraud scoring.",
    display_name="User transactions",
)
def user_transactions() -> fs.SparkSqlTransformation:
    """Latest transaction per user, with the amount in cents and a high-value flag."""
    return fs.SparkSqlTransformation(
        """
        SELECT user_id,
               amount,
               amount_cents(amount) AS amount_cents,
               amount >= 500 AS is_high_value,
               merchant,
               is_remote,
               ts
        FROM transactions
        """,
        functions=[amount_cents],
    )
