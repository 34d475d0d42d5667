"""Layer 5: Dagster. Assets, jobs, schedules and sensors built from feature sets.

Thin by design: it calls the engine and holds no feature logic.
"""
