"""Layer 3: Spark. Reading sources, applying transformations, running the pipelines."""
