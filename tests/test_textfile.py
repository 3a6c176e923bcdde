"""Text a user writes by hand, read strictly (`hiersearch.textfile`): UTF-8 with a bad byte
named by its line, YAML with its line, a key given twice refused naming both lines."""

from __future__ import annotations

import pytest

from hiersearch.errors import InputError
from hiersearch.textfile import decode_utf8, parse_yaml


def test_utf8_decodes_and_a_latin1_byte_is_named_by_line_and_column() -> None:
    assert decode_utf8("caf\u00e9\n".encode(), "f.yaml") == "caf\u00e9\n"
    with pytest.raises(InputError) as refused:
        decode_utf8("name: x\ndescription: caf\u00e9\n".encode("latin-1"), "f.yaml")
    assert str(refused.value) == "f.yaml:2: invalid UTF-8 (byte 17 of the line)"


def test_yaml_parses_and_an_empty_document_is_none() -> None:
    assert parse_yaml("a: 1\nb: [x, y]\n", "f.yaml") == {"a": 1, "b": ["x", "y"]}
    assert parse_yaml("# only a comment\n", "f.yaml") is None


def test_invalid_yaml_is_an_input_error_with_its_line() -> None:
    with pytest.raises(InputError, match=r"^f\.yaml: invalid YAML line 2: mapping values"):
        parse_yaml("a: 1\nb: x: y\n", "f.yaml")


def test_a_key_given_twice_names_its_section_and_both_lines() -> None:
    with pytest.raises(InputError) as refused:
        parse_yaml("trial:\n  lr: 1\n  lr: 2\n", "f.yaml")
    assert str(refused.value) == (
        "f.yaml: trial: key 'lr' is given twice (lines 2 and 3); a YAML reader would keep the "
        "last one silently: keep one"
    )


def test_a_key_given_twice_in_a_list_item_names_its_index() -> None:
    with pytest.raises(InputError, match=r"^f\.yaml: runs: \[1\]: key 'a' .*both on line 3"):
        parse_yaml("runs:\n  - {a: 1}\n  - {a: 1, a: 2}\n", "f.yaml")


def test_anchors_and_merge_keys_are_no_duplicates() -> None:
    text = "base: &b {x: 1}\nmore:\n  <<: *b\n  y: 2\nagain: *b\n"
    assert parse_yaml(text, "f.yaml") == {"base": {"x": 1}, "more": {"x": 1, "y": 2},
                                          "again": {"x": 1}}
