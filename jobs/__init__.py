"""The example project's feature sets (and its demo event generator)."""

from jobs.spend import user_spend
from jobs.transactions import transactions, user_transactions

FEATURE_SETS = [user_transactions, user_spend]

__all__ = ["FEATURE_SETS", "transactions", "user_spend", "user_transactions"]
