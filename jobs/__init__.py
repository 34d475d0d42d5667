"""The example project's feature sets (and its demo event generator)."""

from jobs.transactions import transactions, user_transactions

FEATURE_SETS = [user_transactions]

__all__ = ["FEATURE_SETS", "transactions", "user_transactions"]
