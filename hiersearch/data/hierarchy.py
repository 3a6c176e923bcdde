"""Label hierarchies: nodes with parents and levels, ancestor closure, truncation to a range of
levels, and builders for EuroVoc, ICD-9-CM, parent-link files and level files.

Levels are 1-based, level 1 the most general. Within a level, labels keep the insertion order of
the builder (`level_labels`), so a hierarchy built twice from the same source lists its labels in
the same order; that order is the column order of the per-level targets downstream.

Levels of a tree and of a poly-hierarchy (a DAG: some label has several parents, as in GO, HPO
or MeSH). Builders derive levels from parent links: the level of a label is 1 + the length of its
shortest path to a root. In a tree every label then sits one level below its parent, and a
hierarchy whose levels say otherwise (a levels file, a hierarchy.json) is refused. In a
poly-hierarchy a label's other parents may sit at any level, its own or deeper ones, and the
link its shortest path ran through may not be a label at all (an ontology's root that is left
out, levels cut off by `truncate`): its levels are not checked against its parents. A label's
ancestors stay all its ancestors in the DAG that are labels: when `truncate` drops a parent,
the nearest kept labels above that parent become direct parents. A truncated poly-hierarchy
stays one (`poly`), even when no label is left with several parents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiersearch.errors import InputError
from hiersearch.textfile import decode_utf8
from hiersearch.typed import parse_json, parse_json_object


@dataclass(frozen=True)
class Node:
    id: str
    description: str  # human readable
    parents: tuple[str, ...]  # empty for roots; several parents allowed (poly-hierarchy)
    level: int  # 1 = most general


def _topological_order(parents: Mapping[str, Sequence[str]], name: str) -> list[str]:
    """Ids ordered parents-first; a cycle is an InputError that lists the nodes in it."""
    state: dict[str, int] = {}  # 1: on the current DFS path, 2: finished
    order: list[str] = []
    for start in parents:
        if start in state:
            continue
        path, pending = [start], [iter(parents[start])]
        state[start] = 1
        while path:
            nxt = next(pending[-1], None)
            if nxt is None:
                done = path.pop()
                pending.pop()
                state[done] = 2
                order.append(done)
            elif state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise InputError(
                    "the hierarchy has a cycle (child -> parent): " + " -> ".join(cycle),
                    where=f"hierarchy {name}",
                )
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                pending.append(iter(parents[nxt]))
    return order


def _check_levels(nodes: Mapping[str, Node], where: str) -> None:
    """In a tree a label sits one level below its parent (the rule every builder derives levels
    by): a level that contradicts the parent's is an error, not a silent second opinion. Only
    called for trees: a poly-hierarchy's levels are its source's (module docstring)."""
    for node in nodes.values():
        if node.parents and node.level != nodes[node.parents[0]].level + 1:
            raise InputError(
                f"label {node.id!r} is at level {node.level}, but its parent "
                f"{node.parents[0]!r} is at level {nodes[node.parents[0]].level} (in a tree a "
                "label sits one level below its parent)",
                where=where,
            )


class Hierarchy:
    """An immutable label hierarchy (a DAG of levels 1..depth).

    `outside` is set only by `truncate`: it maps each label dropped by the truncation to its
    ancestors that were kept, so that a document labelled with a dropped deep label still gets
    the kept ancestors (augmentation happens on the full hierarchy, then the range is applied).
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        name: str = "custom",
        *,
        outside: Mapping[str, Iterable[str]] | None = None,
        poly: bool = False,
    ) -> None:
        self.name = name
        where = f"hierarchy {name}"
        self._nodes: dict[str, Node] = {}
        for node in nodes:
            if node.id in self._nodes:
                raise InputError(f"label {node.id!r} is defined twice", where=where)
            if isinstance(node.level, bool) or not isinstance(node.level, int) or node.level < 1:
                raise InputError(
                    f"label {node.id!r} has level {node.level!r}; levels start at 1", where=where
                )
            self._nodes[node.id] = node
        if not self._nodes:
            raise InputError("the hierarchy has no labels", where=where)
        for node in self._nodes.values():
            for parent in node.parents:
                if parent not in self._nodes:
                    raise InputError(
                        f"label {node.id!r} names unknown parent {parent!r}", where=where
                    )
        self._order = _topological_order({k: n.parents for k, n in self._nodes.items()}, name)
        several = any(len(n.parents) > 1 for n in self._nodes.values())
        # `poly` keeps a truncated poly-hierarchy one when it lost its labels with several
        # parents; only then does `to_json` record it (the parents do not show it)
        self.poly = poly or several
        self._poly_given = poly and not several
        if not self.poly:
            _check_levels(self._nodes, where)
        levels: dict[int, list[str]] = {}
        for node in self._nodes.values():
            levels.setdefault(node.level, []).append(node.id)
        empty = [lv for lv in range(1, max(levels) + 1) if lv not in levels]
        if empty:
            raise InputError(
                f"level(s) {empty} have no labels; levels must be 1..depth without gaps",
                where=where,
            )
        self._levels = [levels[lv] for lv in range(1, len(levels) + 1)]
        self._outside = {k: frozenset(v) for k, v in (outside or {}).items()}
        for key, kept in self._outside.items():
            if key in self._nodes or not kept <= self._nodes.keys():
                raise InputError(
                    f"'outside' entry {key!r} is a kept label or names unknown ancestors",
                    where=where,
                )
        self._ancestors: dict[str, frozenset[str]] | None = None
        self._children: dict[str, tuple[str, ...]] | None = None
        self._fingerprint: str | None = None

    # -- structure -----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of levels."""
        return len(self._levels)

    def node(self, id: str) -> Node:
        return self._nodes[id]

    def __contains__(self, id: object) -> bool:
        return id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        """Nodes in insertion order."""
        return iter(self._nodes.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hierarchy) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"Hierarchy(name={self.name!r}, label_counts={self.label_counts()})"

    def level_labels(self, level: int) -> list[str]:
        """Labels of a 1-based level, in the builder's insertion order."""
        if not 1 <= level <= self.depth:
            raise InputError(
                f"level {level} is out of range 1..{self.depth}", where=f"hierarchy {self.name}"
            )
        return list(self._levels[level - 1])

    def label_index(self) -> list[list[str]]:
        return [list(labels) for labels in self._levels]

    def label_counts(self) -> list[int]:
        return [len(labels) for labels in self._levels]

    def children(self, id: str) -> tuple[str, ...]:
        """Direct children, in insertion order."""
        if self._children is None:
            kids: dict[str, list[str]] = {k: [] for k in self._nodes}
            for node in self._nodes.values():
                for parent in node.parents:
                    kids[parent].append(node.id)
            self._children = {k: tuple(v) for k, v in kids.items()}
        return self._children[id]

    def ancestors(self, id: str) -> frozenset[str]:
        """All ancestors (transitive), not including `id`; computed once for every node."""
        if self._ancestors is None:
            closure: dict[str, frozenset[str]] = {}
            for key in self._order:  # parents come first, so their closure is ready
                parents = self._nodes[key].parents
                closure[key] = frozenset(parents).union(*(closure[p] for p in parents))
            self._ancestors = closure
        return self._ancestors[id]

    def augment(self, labels: Iterable[str]) -> set[str]:
        """`labels` plus all their ancestors (label augmentation). Unknown labels: KeyError;
        callers that accept user labels filter with `in` first (see `corpus.finalize`)."""
        out: set[str] = set()
        for label in labels:
            out.add(label)
            out |= self.ancestors(label)
        return out

    def outside_ancestors(self, id: str) -> frozenset[str] | None:
        """For a label removed by `truncate`: its kept ancestors (maybe none); else None."""
        return self._outside.get(id)

    def truncate(self, first: int, last: int) -> Hierarchy:
        """Keep levels first..last (1-based, inclusive), renumbered from 1. Parent links to
        dropped nodes are removed; dropped labels remember their kept ancestors."""
        if not 1 <= first <= last <= self.depth:
            raise InputError(
                f"cannot keep levels {first}..{last}: the hierarchy {self.name!r} has "
                f"{self.depth} levels (valid: 1 <= first <= last <= {self.depth})",
                where="levels",
            )
        kept = {k for k, n in self._nodes.items() if first <= n.level <= last}
        nodes = [
            Node(n.id, n.description, self._kept_parents(n, kept), n.level - first + 1)
            for n in self._nodes.values()
            if n.id in kept
        ]
        outside = {k: v & kept for k, v in self._outside.items()}
        outside.update({k: self.ancestors(k) & kept for k in self._nodes if k not in kept})
        name = self.name if (first, last) == (1, self.depth) else f"{self.name}.L{first}-{last}"
        return Hierarchy(nodes, name, outside=outside, poly=self.poly)

    def _kept_parents(self, node: Node, kept: set[str]) -> tuple[str, ...]:
        """`node`'s kept parents, then, for a dropped parent, the nearest kept labels above it
        (its ancestors reached through dropped labels only), so that the truncated ancestors
        are the kept ones of the full hierarchy. In a tree a dropped parent lies above the kept
        levels, with all its ancestors: nothing is added."""
        out = [p for p in node.parents if p in kept]
        seen, queue = set(node.parents), [p for p in node.parents if p not in kept]
        while queue:
            for parent in self._nodes[queue.pop(0)].parents:
                if parent in seen:
                    continue
                seen.add(parent)
                (out if parent in kept else queue).append(parent)
        return tuple(out)

    def restrict(self, labels: Iterable[str]) -> Hierarchy:
        """The sub-hierarchy of `labels` and all their ancestors (the label universe of a
        corpus that uses only part of a large hierarchy); levels keep their numbers."""
        keep = self.augment(labels)
        nodes = [n for n in self._nodes.values() if n.id in keep]
        name = self.name if len(keep) == len(self) else f"{self.name}.subset"
        return Hierarchy(nodes, name, poly=self.poly)

    # -- serialization -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "name": self.name,
            "nodes": [
                {
                    "id": n.id,
                    "description": n.description,
                    "parents": list(n.parents),
                    "level": n.level,
                }
                for n in self._nodes.values()
            ],
        }
        if self._outside:
            obj["outside"] = {k: sorted(v) for k, v in self._outside.items()}
        if self._poly_given:  # only where the parents do not show it: fingerprints stay
            obj["poly"] = True
        return obj

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Hierarchy:
        """Parse the hierarchy.json layout; errors name `where` (the file) and the key."""
        if not isinstance(obj, dict) or not isinstance(obj.get("nodes"), list):
            raise InputError("expected an object with a 'nodes' list", where=where)
        name = obj.get("name", "custom")
        if not isinstance(name, str):
            raise InputError("'name' must be a string", where=where)
        nodes = []
        for i, raw in enumerate(obj["nodes"]):
            key = f"nodes[{i}]"
            if not isinstance(raw, dict):
                raise InputError(f"{key} must be an object", where=where)
            for field, kind in (
                ("id", str),
                ("description", str),
                ("parents", list),
                ("level", int),
            ):
                if not isinstance(raw.get(field), kind) or isinstance(raw.get(field), bool):
                    raise InputError(
                        f"{key}.{field} is missing or not a {kind.__name__}", where=where
                    )
            if not all(isinstance(p, str) for p in raw["parents"]):
                raise InputError(f"{key}.parents must list label ids (strings)", where=where)
            nodes.append(Node(raw["id"], raw["description"], tuple(raw["parents"]), raw["level"]))
        outside = obj.get("outside") or {}
        if not isinstance(outside, dict) or not all(
            isinstance(v, list) and all(isinstance(a, str) for a in v) for v in outside.values()
        ):
            raise InputError("'outside' must map label ids to lists of label ids", where=where)
        poly = obj.get("poly", False)
        if not isinstance(poly, bool):
            raise InputError("'poly' must be true or false", where=where)
        try:
            return cls(nodes, name, outside=outside, poly=poly)
        except InputError as err:
            raise InputError(str(err), where=where) from None

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON; a cache key for everything derived from the labels."""
        if self._fingerprint is None:
            canonical = json.dumps(
                self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            self._fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return self._fingerprint


# -- shared file helpers --------------------------------------------------------------------------
def read_json_file(path: str | Path) -> Any:
    """Parse a JSON file; a missing/unreadable file or bad JSON is an InputError naming the file
    (and the line for bad JSON)."""
    path = Path(path)
    return parse_json(read_text_file(path), str(path))


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold an object (`read_json_file`; anything else is an InputError
    naming the file)."""
    path = Path(path)
    return parse_json_object(read_text_file(path), str(path))


def read_text_file(path: Path) -> str:
    """A UTF-8 text file; unreadable or not UTF-8 is an InputError naming the file and line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError.from_os_error(err, str(path), "cannot read the file") from None
    return decode_utf8(data, str(path))


def _levels_from_links(parents: Mapping[str, Sequence[str]], name: str) -> dict[str, int]:
    """Level = 1 + length of the shortest path to a root (BFS down from all roots)."""
    _topological_order(parents, name)  # a cycle is reported with its nodes before anything else
    children: dict[str, list[str]] = {k: [] for k in parents}
    for child, ps in parents.items():
        for p in ps:
            children[p].append(child)
    level = {k: 1 for k, ps in parents.items() if not ps}
    frontier = list(level)
    while frontier:
        nxt = []
        for key in frontier:
            for child in children[key]:
                if child not in level:
                    level[child] = level[key] + 1
                    nxt.append(child)
        frontier = nxt
    return level


def _read_parent_links(path: Path) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """id -> (description or None, parents) from a EURLEX57K label file or a TSV file."""
    links: dict[str, tuple[str | None, list[str]]] = {}
    if path.suffix.lower() == ".json":
        obj = read_json_file(path)
        if not isinstance(obj, dict):
            raise InputError(
                'expected an object {id: {"label": ..., "parents": [...]}}', where=str(path)
            )
        for key, entry in obj.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
                raise InputError(f"entry {key!r} needs a string 'label'", where=str(path))
            ps = entry.get("parents") or []
            if not isinstance(ps, list) or not all(isinstance(p, (str, int)) for p in ps):
                raise InputError(
                    f"entry {key!r}: 'parents' must be a list of ids or null", where=str(path)
                )
            links[str(key)] = (entry["label"], [str(p) for p in ps])
    else:
        links = _read_tsv_links(path)
    return {k: (d, tuple(ps)) for k, (d, ps) in links.items()}


def _read_tsv_links(path: Path) -> dict[str, tuple[str | None, list[str]]]:
    """child<TAB>parent[<TAB>description] lines; every parent must be declared by a line of
    its own (a line without a parent declares a root), so that a typo in a parent id is an
    error naming its line rather than a new root."""
    links: dict[str, tuple[str | None, list[str]]] = {}
    named_at: dict[str, int] = {}  # parent id -> the first line naming it
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        where = f"{path}:{lineno}"
        if not fields[0]:
            raise InputError("empty child id", where=where)
        if len(fields) == 1 and len(fields[0].split()) > 1:
            raise InputError(
                f"no tab in {line.strip()!r}: fields are tab-separated (child<TAB>parent"
                "[<TAB>description]); an id holds no space",
                where=where,
            )
        if len(fields[0].split()) > 1 or (len(fields) > 1 and len(fields[1].split()) > 1):
            raise InputError("an id holds a space: are the fields tab-separated?", where=where)
        child, parent = fields[0], (fields[1] if len(fields) > 1 else "")
        desc, ps = links.get(child, (None, []))
        if len(fields) > 2 and fields[2]:
            desc = fields[2]
        if parent and parent not in ps:
            ps.append(parent)
            named_at.setdefault(parent, lineno)
        links[child] = (desc, ps)
    for parent, lineno in named_at.items():
        if parent not in links:
            raise InputError(
                f"parent {parent!r} is never declared (a root is declared by a line with its "
                "id and no parent)",
                where=f"{path}:{lineno}",
            )
    return links


def load_parent_file(path: str | Path) -> Hierarchy:
    """A parent-link file: a EURLEX57K label file `{id: {"label": str, "parents": [ids] | null}}`
    (.json; other keys ignored) or TSV lines `child<TAB>parent[<TAB>description]` (.tsv/.txt; a
    line without a parent declares a root, '#' starts a comment). Every parent must be defined.
    Level = 1 + shortest path to a root; descriptions default to the id."""
    path = Path(path)
    links = _read_parent_links(path)
    if not links:
        raise InputError("the file defines no labels", where=str(path))
    for key, (_, ps) in links.items():
        missing = [p for p in ps if p not in links]
        if missing:
            raise InputError(f"label {key!r} names undefined parent(s) {missing}", where=str(path))
    try:
        return hierarchy_from_links(links, path.stem)
    except InputError as err:
        raise InputError(str(err), where=str(path)) from None


def hierarchy_from_links(
    links: Mapping[str, tuple[str | None, Sequence[str]]], name: str
) -> Hierarchy:
    """id -> (description or None, parent ids), every parent one of the ids: level = 1 +
    shortest path to a root; descriptions default to the id; file order within a level."""
    level = _levels_from_links({k: ps for k, (_, ps) in links.items()}, name)
    nodes = [Node(k, d or k, tuple(ps), level[k]) for k, (d, ps) in links.items()]
    nodes.sort(key=lambda n: n.level)  # stable: file order within a level
    return Hierarchy(nodes, name)


def load_levels_file(path: str | Path, parents: str | Path | None = None) -> Hierarchy:
    """`{"level_1": [ids], "level_2": [...], ...}` (MultiEURLEX eurovoc_concepts.json; other keys
    such as "original" are ignored). An optional parent-link file (see `load_parent_file`) adds
    descriptions and parent links; links to labels absent from the levels file are dropped."""
    path = Path(path)
    obj = read_json_file(path)
    if not isinstance(obj, dict):
        raise InputError('expected an object {"level_1": [ids], ...}', where=str(path))
    keys = {k for k in obj if k.startswith("level_")}
    depth = len(keys)
    if depth == 0 or keys != {f"level_{i}" for i in range(1, depth + 1)}:
        raise InputError(
            f"expected keys level_1..level_N without gaps, found {sorted(keys)}", where=str(path)
        )
    links = _read_parent_links(Path(parents)) if parents is not None else {}
    level_of: dict[str, int] = {}
    for lv in range(1, depth + 1):
        ids = obj[f"level_{lv}"]
        if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
            raise InputError(f"'level_{lv}' must be a list of ids", where=str(path))
        for raw in ids:
            key = str(raw)
            if key in level_of:
                raise InputError(
                    f"label {key!r} appears in level_{level_of[key]} and level_{lv}",
                    where=str(path),
                )
            level_of[key] = lv
    nodes = []
    for key, lv in level_of.items():
        desc, ps = links.get(key, (None, ()))
        nodes.append(Node(key, desc or key, tuple(p for p in ps if p in level_of), lv))
    return Hierarchy(nodes, path.stem)
