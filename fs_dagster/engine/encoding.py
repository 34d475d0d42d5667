"""How Spark column types are encoded in online stores and tile states."""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DataType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    ShortType,
    StringType,
    StructType,
    TimestampNTZType,
    TimestampType,
)

from fs_dagster.stores.online.base import ColumnKind

__all__ = ["online_kind", "spark_type"]


def online_kind(data_type: DataType) -> ColumnKind:
    """How values of ``data_type`` are encoded in online stores."""
    if isinstance(data_type, StringType):
        return "string"
    if isinstance(data_type, LongType):
        return "long"
    if isinstance(data_type, IntegerType | ShortType):
        return "int"
    if isinstance(data_type, DoubleType):
        return "double"
    if isinstance(data_type, FloatType):
        return "float"
    if isinstance(data_type, BooleanType):
        return "boolean"
    if isinstance(data_type, TimestampType | TimestampNTZType):
        return "timestamp"
    if isinstance(data_type, DateType):
        return "date"
    if isinstance(data_type, BinaryType):
        return "binary"
    if isinstance(data_type, DecimalType):
        return "decimal"
    if isinstance(data_type, ArrayType | MapType | StructType):
        return "json"
    return "string"


_SPARK_TYPES: dict[str, DataType] = {
    "string": StringType(),
    "long": LongType(),
    "int": IntegerType(),
    "double": DoubleType(),
    "float": FloatType(),
    "boolean": BooleanType(),
    "timestamp": TimestampType(),
    "date": DateType(),
    "binary": BinaryType(),
    "json": StringType(),
    "decimal": DoubleType(),
}


def spark_type(kind: ColumnKind) -> DataType:
    """The Spark type values of ``kind`` are read back as."""
    return _SPARK_TYPES[kind]
