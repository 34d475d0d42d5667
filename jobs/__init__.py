"""The example project's feature sets (and its demo data generator)."""

from jobs.spend import transactions_history, user_spend
from jobs.transactions import transactions, user_transactions

FEATURE_SETS = [user_transactions, user_spend]

__all__ = [
    "FEATURE_SETS",
    "transactions",
    "transactions_history",
    "user_spend",
    "user_transactions",
]
