"""Column types and schemas declared by users for pandas UDF outputs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = ["Column", "Schema", "Type"]


class Type(Enum):
    """A column type; the value is the Spark SQL type name."""

    string = "STRING"
    long = "BIGINT"
    int = "INT"
    double = "DOUBLE"
    float = "FLOAT"
    boolean = "BOOLEAN"
    timestamp = "TIMESTAMP"
    date = "DATE"
    binary = "BINARY"


@dataclass(frozen=True)
class Column:
    """One output column of a pandas UDF.

    Attributes:
        name: column name (for a single-column UDF used in SQL it may be left empty; the
            SQL alias names the result).
        type: the column's :class:`Type`.
    """

    name: str = ""
    type: Type = Type.string


@dataclass(frozen=True, init=False)
class Schema:
    """An ordered list of columns.

    Example:
        >>> Schema([Column(name="amount_cents", type=Type.long)]).to_ddl()
        '`amount_cents` BIGINT'
    """

    columns: tuple[Column, ...]

    def __init__(self, columns: Iterable[Column]):
        object.__setattr__(self, "columns", tuple(columns))

    def to_ddl(self) -> str:
        """The schema as a Spark DDL string (``name TYPE, ...``)."""
        return ", ".join(
            f"`{c.name}` {c.type.value}" if c.name else c.type.value for c in self.columns
        )

    @property
    def names(self) -> list[str]:
        """Column names in order."""
        return [c.name for c in self.columns]
