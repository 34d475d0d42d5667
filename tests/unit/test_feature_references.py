"""Feature references ``"<feature set>.<feature>"``: parsing, resolution and its errors."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pytest

from fs_dagster.definitions.references import (
    FeatureReference,
    FeatureReferenceError,
    parse_reference,
    parse_references,
    reference_name,
    resolve_references,
)

pytestmark = pytest.mark.unit

KNOWN = {
    "user-spend": ["sum_amount_1h", "count_amount_1h", "sum_amount_1d"],
    "user_profile": ["age", "city"],
    "merchant-risk": ["chargebacks"],
}


@pytest.mark.parametrize(
    ("text", "feature_set", "feature"),
    [
        ("user-spend.sum_amount_1h", "user-spend", "sum_amount_1h"),
        ("user_profile.age", "user_profile", "age"),
        ("a-b_c-9.x", "a-b_c-9", "x"),
        ("user-spend.*", "user-spend", None),
        # Feature set names hold no dot: the first dot splits, the rest is the feature.
        ("raw.payload.field", "raw", "payload.field"),
    ],
)
def test_parse(text: str, feature_set: str, feature: str | None) -> None:
    parsed = parse_reference(text)
    assert parsed == FeatureReference(feature_set, feature)
    assert str(parsed) == text


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("user-spend", "expected '<feature set>.<feature>' or '<feature set>.*'"),
        ("user-spend.", "expected '<feature set>.<feature>'"),
        (".age", "expected '<feature set>.<feature>'"),
        ("", "expected '<feature set>.<feature>'"),
        (" user-spend.age", "remove the spaces"),
        ("user-spend.age ", "remove the spaces"),
        (42, "a reference is a string '<feature set>.<feature>'"),
        (None, "not NoneType"),
    ],
)
def test_parse_errors_name_reference_and_form(reference: object, message: str) -> None:
    with pytest.raises(FeatureReferenceError) as error:
        parse_reference(reference)
    assert message in str(error.value)
    assert repr(reference) in str(error.value)
    assert error.value.reference == reference


def test_parse_references_takes_one_or_many_but_not_none() -> None:
    assert parse_references("user-spend.*") == [FeatureReference("user-spend", None)]
    assert parse_references(["a.x", "b.y"]) == [
        FeatureReference("a", "x"),
        FeatureReference("b", "y"),
    ]
    empties: list[object] = [[], (), None, {"a.x"}]
    for empty in empties:
        with pytest.raises(FeatureReferenceError, match="non-empty list of references"):
            parse_references(empty)


def test_resolve_keeps_request_order_and_expands_star_in_set_order() -> None:
    resolved = resolve_references(
        ["user_profile.city", "user-spend.*", "merchant-risk.chargebacks", "user_profile.age"],
        KNOWN,
    )
    assert resolved.columns == [
        "user_profile.city",
        "user-spend.sum_amount_1h",
        "user-spend.count_amount_1h",
        "user-spend.sum_amount_1d",
        "merchant-risk.chargebacks",
        "user_profile.age",
    ]
    assert resolved.feature_sets == ["user_profile", "user-spend", "merchant-risk"]
    assert resolved.of("user_profile") == ["city", "age"]
    assert resolved.of("merchant-risk") == ["chargebacks"]


def test_resolve_counts_a_feature_asked_twice_once_where_first_asked() -> None:
    resolved = resolve_references(
        ["user-spend.sum_amount_1d", "user-spend.*", "user-spend.sum_amount_1d"], KNOWN
    )
    assert resolved.columns == [
        "user-spend.sum_amount_1d",
        "user-spend.sum_amount_1h",
        "user-spend.count_amount_1h",
    ]


def test_unknown_feature_set_lists_the_known_ones() -> None:
    with pytest.raises(FeatureReferenceError) as error:
        resolve_references(["user-spend.*", "user-spends.sum_amount_1h"], KNOWN)
    message = str(error.value)
    assert "'user-spends.sum_amount_1h'" in message
    assert "unknown feature set 'user-spends'" in message
    assert "known feature sets: merchant-risk, user-spend, user_profile" in message


def test_unknown_feature_lists_the_sets_features() -> None:
    with pytest.raises(FeatureReferenceError) as error:
        resolve_references(["user-spend.sum_amount_7d"], KNOWN)
    message = str(error.value)
    assert "'user-spend.sum_amount_7d'" in message
    assert "feature set 'user-spend' has no feature 'sum_amount_7d'" in message
    assert "sum_amount_1h, count_amount_1h, sum_amount_1d" in message
    assert "'user-spend.*' for all" in message


def test_feature_names_are_asked_only_for_sets_referenced() -> None:
    asked: list[str] = []

    def names(feature_set: str) -> Sequence[str]:
        asked.append(feature_set)
        return KNOWN[feature_set]

    resolved = resolve_references(["user_profile.age", "user_profile.*"], names, KNOWN.keys())
    assert asked == ["user_profile"]
    assert resolved.columns == ["user_profile.age", "user_profile.city"]
    with pytest.raises(TypeError, match="known_sets is required"):
        resolve_references(["user_profile.age"], names)


def test_known_sets_limit_a_mapping() -> None:
    with pytest.raises(FeatureReferenceError, match=r"known feature sets: user-spend\)"):
        resolve_references(["user_profile.age"], KNOWN, known_sets=["user-spend"])


def test_reference_name_is_the_column_name() -> None:
    assert reference_name("user-spend", "ts") == "user-spend.ts"
    assert resolve_references(["user-spend.sum_amount_1h"], KNOWN).columns == [
        reference_name("user-spend", "sum_amount_1h")
    ]


# ------------------------------------------------------------------ keys of combined reads


def test_key_rows_take_every_form() -> None:
    from fs_dagster.engine.combined import key_rows

    columns = ["user_id", "merchant_id"]
    given = [{"user_id": "u1", "merchant_id": "m1", "note": 1}, {"user_id": "u2"}]
    rows = key_rows(given, columns, "'a', 'b'")
    assert rows.rows == [{"user_id": "u1", "merchant_id": "m1"}, {"user_id": "u2"}]
    assert rows.columns == ("user_id",)  # only the columns every row has
    assert key_rows({"user_id": "u1"}, ["user_id"], "'a'").rows == [{"user_id": "u1"}]
    assert key_rows("u1", ["user_id"], "'a'").rows == [{"user_id": "u1"}]
    assert key_rows(["u1", "u2"], ["user_id"], "'a'").columns == ("user_id",)
    assert key_rows([("u1", "m1")], columns, "'a'").rows == [{"user_id": "u1", "merchant_id": "m1"}]
    frame = pd.DataFrame({"merchant_id": ["m1"], "user_id": ["u1"], "x": [0]})
    from_frame = key_rows(frame, columns, "'a'")
    assert from_frame.columns == ("user_id", "merchant_id")
    assert list(from_frame.key_frame(columns).columns) == columns


def test_key_rows_errors_say_what_is_accepted() -> None:
    from fs_dagster.engine.combined import key_rows

    with pytest.raises(ValueError, match=r"keys for 'a', 'b' have several columns"):
        key_rows(["u1"], ["user_id", "merchant_id"], "'a', 'b'")
    with pytest.raises(ValueError, match=r"is not a tuple of \(user_id, merchant_id\)"):
        key_rows([("u1",)], ["user_id", "merchant_id"], "'a'")
