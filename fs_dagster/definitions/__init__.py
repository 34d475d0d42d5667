"""Layer 1: pure declarations of feature sets, sources, transformations and sinks.

Nothing here imports Spark, Dagster, Kafka or Cassandra; every object validates itself
when it is created.
"""
