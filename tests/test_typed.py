"""Mappings -> frozen dataclasses (`hiersearch.typed`): conversions and what errors name."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hiersearch.errors import InputError
from hiersearch.typed import coerce, from_mapping, parse_json, parse_json_object


@dataclass(frozen=True)
class _Spec:
    names: tuple[str, ...] | None = None
    pair: tuple[int, int] | None = None
    rate: float = 0.5
    count: int = 1
    flag: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InputError(f"must be >= 1, got {self.count}", where="count")


def test_yaml_and_json_values_become_the_field_types() -> None:
    spec = from_mapping(
        _Spec, {"names": ["a", "b"], "pair": [1, 2], "rate": "5e-5", "count": 3.0}, "f: s"
    )
    assert spec == _Spec(names=("a", "b"), pair=(1, 2), rate=5e-5, count=3)


def test_unknown_key_names_file_section_and_known_keys() -> None:
    with pytest.raises(InputError, match=r"^f\.yaml: s: unknown key 'nmes' \(known: count, "):
        from_mapping(_Spec, {"nmes": ["a"]}, "f.yaml: s")


def test_wrong_type_names_the_key_and_the_expected_type() -> None:
    with pytest.raises(InputError, match=r"^f: s: names: expected a list of str \| None, got 'a'"):
        from_mapping(_Spec, {"names": "a"}, "f: s")
    with pytest.raises(InputError, match=r"^f: s: flag: expected bool, got 1$"):
        from_mapping(_Spec, {"flag": 1}, "f: s")


def test_the_dataclass_own_checks_are_placed_in_the_file_and_section() -> None:
    with pytest.raises(InputError, match=r"^f\.yaml: s: count: must be >= 1, got 0$"):
        from_mapping(_Spec, {"count": 0}, "f.yaml: s")


def test_lossy_conversions_are_refused() -> None:
    with pytest.raises(InputError, match="expected int, got 2.5"):
        coerce(2.5, int, "k")
    with pytest.raises(InputError, match="expected a list of 2 values"):
        coerce([1, 2, 3], tuple[int, int], "k")


def test_the_json_parser_names_the_file_and_line_of_bad_json() -> None:
    assert parse_json("[1]", "a.json") == [1]
    with pytest.raises(InputError, match=r"^a\.json:2: invalid JSON: Expecting value"):
        parse_json('{"a":\n', "a.json")
    with pytest.raises(InputError, match=r"^a\.json: expected a JSON object"):
        parse_json_object('"text"', "a.json")
    assert parse_json_object('{"a": 1}', "a.json") == {"a": 1}
