"""The example project's feature sets (and its demo data generator)."""

from jobs.merchants import CHAINED
from jobs.spend import transactions_history, user_spend
from jobs.transactions import transactions, user_transactions

# With Kafka, merchant-activity is chained on user-transactions' sink topic.
FEATURE_SETS = [user_transactions, user_spend, *CHAINED]

__all__ = [
    "FEATURE_SETS",
    "transactions",
    "transactions_history",
    "user_spend",
    "user_transactions",
]
