"""Text a user writes by hand, read strictly: UTF-8 (a bad byte named by its line) and YAML
(a key given twice in one mapping is refused, naming both lines: a YAML reader keeps the last
value silently, so a search would run with one of two settings).

Every error is an `InputError` naming the file (and line, or section and key).
"""

from __future__ import annotations

from typing import Any

import yaml

from hiersearch.errors import InputError

__all__ = ["decode_utf8", "parse_yaml"]


def decode_utf8(data: bytes, where: str) -> str:
    """`data` as UTF-8 text; a byte that is not is an InputError naming `where` and its line:
    "space.yaml:3: invalid UTF-8 (byte 12 of the line)"."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(
            f"invalid UTF-8 (byte {column} of the line)", where=f"{where}:{line}"
        ) from None


def parse_yaml(text: str, where: str) -> Any:
    """The YAML document in `text` (None when empty). Invalid YAML is an InputError with its
    line; a key given twice in one mapping is an InputError naming the key, its section and
    the lines of both."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(loader, node, [], where, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(
            f"invalid YAML{line}: {getattr(exc, 'problem', exc)}", where=where
        ) from exc
    finally:
        loader.dispose()


def _refuse_duplicate_keys(
    loader: yaml.SafeLoader, node: yaml.Node, path: list[str], where: str, seen: set[int]
) -> None:
    """An InputError naming the key, its section and the lines of both occurrences."""
    if id(node) in seen:  # an alias: its anchor's node was checked already (and may recur)
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(loader, item, [*path, f"[{index}]"], where, seen)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[Any, int] = {}  # key -> the line it first occurs on
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat by design
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = lines.get(key)
            lines.setdefault(key, line)
        except TypeError:  # an unhashable key: the file's checks name it later
            first = None
        if first is not None:
            places = f"both on line {line}" if first == line else f"lines {first} and {line}"
            raise InputError(
                f"key {key!r} is given twice ({places}); a YAML reader would keep the last "
                "one silently: keep one",
                where=": ".join([where, *path]),
            )
        _refuse_duplicate_keys(loader, value_node, [*path, str(key)], where, seen)
