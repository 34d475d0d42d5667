"""Tests of the Dagster layer: definitions, sensors, schedules, runs and ``dagster dev``."""
