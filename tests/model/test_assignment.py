from __future__ import annotations

import pytest

from hiersearch.errors import InputError
from hiersearch.model.assignment import (
    LayerAssignment,
    named_variant,
    named_variants,
    variant_names,
)

EUROVOC_COUNTS = (21, 127, 567, 3861, 2284, 481)

def _groups(variant: LayerAssignment) -> list[tuple[int, ...]]:
    return list(variant.groups)


# ----------------------------------------------------------------------------- variants


def test_paper_variants_match_design_table() -> None:
    variants = named_variants(12, 6, EUROVOC_COUNTS)
    assert list(variants) == ["FLAT", "LAST-SIX", "ONE-BY-ONE", "IN-PAIRS", "HYBRID"]
    assert variants["FLAT"].flat and variants["FLAT"].layers_used(12) == (12,)
    assert _groups(variants["LAST-SIX"]) == [(7,), (8,), (9,), (10,), (11,), (12,)]
    assert _groups(variants["ONE-BY-ONE"]) == [(2,), (4,), (6,), (8,), (10,), (12,)]
    assert _groups(variants["IN-PAIRS"]) == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]
    assert _groups(variants["HYBRID"]) == [(4,), (5,), (6, 7), (8, 9), (10, 11), (12,)]
    assert all(v.name == name for name, v in variants.items())


def test_generalized_variants_for_six_layers_and_three_levels() -> None:
    # MiniLM-L6 on the synthetic EuroVoc corpus's 3 levels (21 / 94 / 200 labels: the quick
    # preset), as its leaderboard shows them
    strings = {
        name: named_variant(name, 6, 3, [21, 94, 200]).to_string()
        for name in ("FLAT", "LAST-THREE", "ONE-BY-ONE", "IN-PAIRS", "HYBRID")
    }
    assert strings == {
        "FLAT": "FLAT",
        "LAST-THREE": "L1:4|L2:5|L3:6",
        "ONE-BY-ONE": "L1:2|L2:4|L3:6",
        "IN-PAIRS": "L1:1+2|L2:3+4|L3:5+6",
        "HYBRID": "L1:2|L2:3+4|L3:5+6",
    }


def test_last_variant_is_named_by_number_word() -> None:
    assert variant_names(3)[1] == "LAST-THREE"
    assert variant_names(12)[1] == "LAST-TWELVE"
    assert variant_names(13)[1] == "LAST-13"


def test_hybrid_without_label_counts_widens_deepest_levels() -> None:
    hybrid = named_variant("HYBRID", 12, 6)
    assert _groups(hybrid) == [(4,), (5,), (6,), (7, 8), (9, 10), (11, 12)]


def test_hybrid_grows_blocks_beyond_pairs_for_deep_models() -> None:
    hybrid = named_variant("HYBRID", 24, 6)
    assert hybrid.groups[0] == (7, 8, 9) and hybrid.groups[-1] == (22, 23, 24)


def test_hybrid_skips_fewer_layers_when_levels_need_them() -> None:
    assert _groups(named_variant("HYBRID", 6, 5)) == [(2,), (3,), (4,), (5,), (6,)]


def test_in_pairs_gives_deepest_levels_the_larger_groups() -> None:
    assert _groups(named_variant("IN-PAIRS", 7, 3)) == [(1, 2), (3, 4), (5, 6, 7)]


def test_one_by_one_spreads_layers_and_ends_on_last() -> None:
    assert _groups(named_variant("ONE-BY-ONE", 12, 5)) == [(2,), (4,), (7,), (9,), (12,)]
    assert _groups(named_variant("ONE-BY-ONE", 6, 6)) == [(i,) for i in range(1, 7)]


def test_variants_need_one_layer_per_level() -> None:
    with pytest.raises(InputError, match="3 layers < 4 levels"):
        named_variant("LAST-FOUR", 3, 4)
    assert named_variant("FLAT", 3, 4).flat


def test_unknown_variant_lists_valid_names() -> None:
    with pytest.raises(InputError, match="LAST-SIX, ONE-BY-ONE"):
        named_variant("LAST-SEVEN", 12, 6)


def test_variant_name_is_case_insensitive() -> None:
    assert named_variant("last-six", 12, 6).name == "LAST-SIX"


def test_label_counts_must_match_levels() -> None:
    with pytest.raises(InputError, match="5 label counts"):
        named_variants(12, 6, EUROVOC_COUNTS[:5])


# ----------------------------------------------------------------------------- the value type


def test_string_round_trip_for_every_variant() -> None:
    for variant in named_variants(12, 6, EUROVOC_COUNTS).values():
        assert LayerAssignment.from_string(variant.to_string()) == variant
    assert named_variant("IN-PAIRS", 4, 2).to_string() == "L1:1+2|L2:3+4"
    assert LayerAssignment.make_flat().to_string() == "FLAT"


def test_from_string_names_the_bad_token() -> None:
    with pytest.raises(InputError, match="'L3:8'"):
        LayerAssignment.from_string("L1:7|L3:8")
    with pytest.raises(InputError, match="'x'"):
        LayerAssignment.from_string("L1:7+x")


def test_short_strings_print_runs_of_three_or_more_layers_as_ranges() -> None:
    assert named_variant("IN-PAIRS", 24, 6).to_short_string().startswith("L1:1-4|L2:5-8|")
    assert named_variant("IN-PAIRS", 4, 2).to_short_string() == "L1:1+2|L2:3+4"
    odd = LayerAssignment(groups=((1, 2, 3, 5), (9, 8, 7)))
    assert odd.to_short_string() == "L1:1-3+5|L2:9+8+7"  # a group's order is kept


def test_a_range_parses_to_every_layer_in_it() -> None:
    for variant in named_variants(48, 6, EUROVOC_COUNTS).values():
        assert LayerAssignment.from_string(variant.to_short_string()) == variant
    assert LayerAssignment.from_string("L1:1-3+5|L2:6").groups == ((1, 2, 3, 5), (6,))


@pytest.mark.parametrize(
    ("text", "message"),
    [("L1:4-1", "runs upwards"), ("L1:1-", "bad layer '1-'"),
     ("L1:1-100000000", "no encoder has layer 100000000")],
)
def test_a_bad_range_is_refused_before_its_layers_are_listed(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        LayerAssignment.from_string(text)


def test_more_layers_than_any_encoder_has_are_refused() -> None:
    with pytest.raises(InputError, match="^layers: 1001 layers: at most 1,000"):
        named_variant("IN-PAIRS", 1001, 6)
    assert named_variant("IN-PAIRS", 1000, 6).groups[-1][-1] == 1000


def test_json_round_trip_keeps_name() -> None:
    variant = named_variant("HYBRID", 12, 6, EUROVOC_COUNTS)
    back = LayerAssignment.from_json(variant.to_json())
    assert back == variant and back.name == "HYBRID"
    assert LayerAssignment.from_json("FLAT").flat


def test_name_is_not_part_of_equality() -> None:
    assert LayerAssignment(groups=((1,),), name="A") == LayerAssignment(groups=((1,),), name="B")


def test_validate_rejects_layer_outside_model() -> None:
    with pytest.raises(InputError, match="layer 13 of a 12-layer model"):
        LayerAssignment.from_string("L1:12|L2:13").validate(12, 2)


def test_validate_rejects_level_count_mismatch() -> None:
    with pytest.raises(InputError, match="2 levels given but the hierarchy has 3"):
        LayerAssignment.from_string("L1:1|L2:2").validate(12, 3)


def test_validate_rejects_level_without_layers() -> None:
    with pytest.raises(InputError, match="level L2 has no layers"):
        LayerAssignment(groups=((1,), ())).validate(12, 2)


def test_layers_used_is_sorted_union() -> None:
    assert LayerAssignment(groups=((5, 3), (3, 9))).layers_used(12) == (3, 5, 9)


