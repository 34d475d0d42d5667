"""The one aggregation library shared by online reads, offline reads and ingestion.

Pure Python: tile arithmetic (:mod:`.tiles`) and mergeable partial states
(:mod:`.states`). Spark computes per-tile partials; everything that merges them or turns
them into feature values is here, so online and offline values come from one code path.
"""
