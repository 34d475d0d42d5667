"""Layer 4: where features are kept. Online stores (latest vector per key) and the
offline store (every version, Delta)."""
