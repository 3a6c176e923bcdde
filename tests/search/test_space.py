from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import yaml

from hiersearch.errors import InputError
from hiersearch.model.assignment import LayerAssignment, named_variants
from hiersearch.report.results import HEAD_OPTION_COLUMNS
from hiersearch.search.space import (
    SpaceFile,
    assignment_of,
    define_by_run,
    fixed_points,
    load_space,
    parse_space,
    preset_path,
    presets,
    trial_config,
)
from hiersearch.trial.config import TrialConfig

COUNTS_3 = [21, 127, 300]


@pytest.mark.parametrize("preset", presets())
def test_every_preset_parses_and_opens_with_its_launch_command(preset: str) -> None:
    space = load_space(preset)
    assert space.name == preset
    assert preset_path(preset).read_text().startswith("# Launch: hiersearch ")


def test_paper_grid_is_five_variants_by_three_rates_by_two_dropouts() -> None:
    space = load_space("paper")
    points = fixed_points(space, 12, [21, 127, 567, 3861, 2284, 481])
    assert len(points) == 30
    assert {p["lr"] for p in points} == {2e-5, 3e-5, 5e-5}
    assert {p["dropout"] for p in points} == {0.0, 0.1}
    assert {p["variant"] for p in points} == {
        "FLAT",
        "LAST-SIX",
        "ONE-BY-ONE",
        "IN-PAIRS",
        "HYBRID",
    }


def test_seeds_multiply_the_fixed_points() -> None:
    raw = yaml.safe_load(preset_path("smoke").read_text())
    raw["tune"]["seeds"] = 3
    assert len(fixed_points(parse_space(raw), 12, COUNTS_3)) == 15


def test_define_by_run_reproduces_every_fixed_point() -> None:
    space = load_space("layerwise")
    fn = define_by_run(space, 6, COUNTS_3)
    variants = named_variants(6, 3, COUNTS_3)
    points = fixed_points(space, 6, COUNTS_3)
    assert len(points) == 5
    for point, (name, variant) in zip(points, variants.items(), strict=True):
        trial = optuna.trial.FixedTrial(point)
        assert fn(trial) is None  # a define-by-run function returns no constants
        assert trial.params == point
        assert assignment_of(point, 6, COUNTS_3, space) == variant.to_string(), name


def test_fixed_points_reach_a_real_study_through_enqueue() -> None:
    space = load_space("layerwise")
    fn = define_by_run(space, 6, COUNTS_3)
    study = optuna.create_study(direction="maximize")
    points = fixed_points(space, 6, COUNTS_3)
    for point in points:
        study.enqueue_trial(point)
    for point in points:
        trial = study.ask()
        fn(trial)
        assert trial.params == point
        study.tell(trial, 0.0)


def test_sampled_trial_config_is_complete_and_valid() -> None:
    space = load_space("layerwise")
    fn = define_by_run(space, 6, COUNTS_3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        fn(trial)
        assignment = assignment_of(trial.params, 6, COUNTS_3, space)
        config = trial_config(space.base_config(), trial.params, assignment)
        assert config.assignment == assignment
        assert config.lr == trial.params["lr"]
        for key in HEAD_OPTION_COLUMNS:
            assert getattr(config, key) == trial.params[key], key
        study.tell(trial, 0.0)


def _smoke_raw() -> dict:
    return yaml.safe_load(preset_path("smoke").read_text())


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("tune", "schedular", "asha", "schedular"),
        ("trial", "learning_rate", 0.1, "learning_rate"),
        ("trial", "epochs", "many", "epochs"),
        ("tune", "scheduler", "hyperband", "scheduler"),
        ("data", "docs", [1], "docs"),
        ("assignment", "space", "free", "space"),
    ],
)
def test_bad_keys_and_values_name_the_key(
    section: str, key: str, value: object, named: str
) -> None:
    raw = _smoke_raw()
    raw[section][key] = value
    with pytest.raises(InputError, match=named):
        parse_space(raw, "smoke.yaml")


def test_unknown_top_level_section_is_named() -> None:
    raw = _smoke_raw()
    raw["trials"] = 3
    with pytest.raises(InputError, match="'trials'"):
        parse_space(raw, "smoke.yaml")


def test_grid_needs_categorical_distributions() -> None:
    raw = _smoke_raw()
    raw["search"] = {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}
    with pytest.raises(InputError, match="search: lr"):
        parse_space(raw, "smoke.yaml")


def test_search_value_outside_trial_config_range_is_named() -> None:
    raw = _smoke_raw()
    raw["search"] = {"dropout": {"type": "categorical", "choices": [0.0, 2.0]}}
    with pytest.raises(InputError, match="dropout"):
        parse_space(raw, "smoke.yaml")


def test_malformed_yaml_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrial:\n  lr: [1,\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*line"):
        load_space(path)


def test_missing_file_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="missing.yaml"):
        load_space(tmp_path / "missing.yaml")


def test_unknown_variant_is_named() -> None:
    raw = _smoke_raw()
    raw["assignment"]["variants"] = ["FLAT", "LAST-TWO"]
    space = parse_space(raw, "smoke.yaml")
    with pytest.raises(InputError, match="LAST-TWO"):
        fixed_points(space, 12, COUNTS_3)


def test_define_by_run_function_pickles_for_tune_checkpoints() -> None:
    import pickle

    fn = define_by_run(load_space("layerwise"), 6, COUNTS_3)
    again = pickle.loads(pickle.dumps(fn))
    trial = optuna.trial.FixedTrial(fixed_points(load_space("layerwise"), 6, COUNTS_3)[0])
    again(trial)
    assert "assign/kind" in trial.params or "assign/L1_start" in trial.params


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("assignment", "max_widht", 2, "smoke.yaml: assignment: unknown key 'max_widht'"),
        ("assignment", "max_width", 0, "smoke.yaml: assignment: max_width: must be >= 1, got 0"),
        ("assignment", "variants", "FLAT", "smoke.yaml: assignment: variants: expected a list"),
        ("tune", "metric", "dev/rp", "smoke.yaml: tune: metric: unknown metric 'dev/rp'"),
        ("data", "seed", "one", "smoke.yaml: data: seed: expected int, got 'one'"),
    ],
)
def test_section_errors_name_file_section_and_key(
    section: str, key: str, value: object, message: str
) -> None:
    raw = _smoke_raw()
    raw[section][key] = value
    with pytest.raises(InputError, match=f"^{message}"):
        parse_space(raw, "smoke.yaml")


def test_searched_value_out_of_range_names_the_search_section_and_key() -> None:
    raw = _smoke_raw()
    raw["search"] = {"dropout": {"type": "categorical", "choices": [0.0, 2.0]}}
    with pytest.raises(InputError, match=r"^smoke\.yaml: search: dropout: must be in \[0, 1\)"):
        parse_space(raw, "smoke.yaml")


def test_a_section_that_is_not_a_mapping_is_named() -> None:
    raw = _smoke_raw()
    raw["trial"] = ["epochs", 3]
    with pytest.raises(InputError, match="^smoke.yaml: trial: must be a mapping"):
        parse_space(raw, "smoke.yaml")


# --- head options ----------------------------------------------------------------------------

HEAD_SEARCH = {
    "pooling": {"type": "categorical", "choices": ["mean", "cls_mean", "cls"]},
    "head_norm": {"type": "categorical", "choices": ["batchnorm", "layernorm", "none"]},
    "head_hidden": {"type": "categorical", "choices": [None, 64, 256]},
    "freeze_layers": {"type": "int", "low": 0, "high": 3},
}


def _head_space() -> SpaceFile:
    raw = _smoke_raw()
    raw["search"] = HEAD_SEARCH
    raw["tune"]["algorithm"] = "tpe"
    return parse_space(raw, "heads.yaml")


def test_head_search_enqueues_the_named_variants_at_the_first_choices() -> None:
    points = fixed_points(_head_space(), 12, COUNTS_3)
    assert [p["variant"] for p in points] == list(named_variants(12, 3, COUNTS_3))
    heads = {tuple(p[k] for k in HEAD_OPTION_COLUMNS) for p in points}
    assert heads == {("mean", "batchnorm", None, 0)}


@pytest.mark.parametrize(
    "head", [("cls_mean", "layernorm", 256, 3), ("cls", "none", None, 0)], ids=str
)
def test_fixed_trial_head_options_reach_the_trial_config(head: tuple) -> None:
    space = _head_space()
    point = {**dict(zip(HEAD_OPTION_COLUMNS, head, strict=True)), "variant": "HYBRID", "seed": 0}
    trial = optuna.trial.FixedTrial(point)
    define_by_run(space, 12, COUNTS_3)(trial)
    config = trial_config(space.base_config(), trial.params, "HYBRID")
    assert tuple(getattr(config, k) for k in HEAD_OPTION_COLUMNS) == head


def test_a_null_choice_is_enqueued_and_sampled_by_a_real_study() -> None:
    space = _head_space()
    fn = define_by_run(space, 12, COUNTS_3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(fixed_points(space, 12, COUNTS_3)[0])
    seen = set()
    for _ in range(12):
        trial = study.ask()
        fn(trial)
        seen.add(trial.params["head_hidden"])
        study.tell(trial, 0.0)
    assert seen == {None, 64, 256}


@pytest.mark.parametrize(
    ("key", "dist"),
    [
        ("pooling", {"type": "categorical", "choices": ["mean", "max"]}),
        ("head_norm", {"type": "categorical", "choices": ["batchnorm", "rms"]}),
        ("head_hidden", {"type": "categorical", "choices": [None, 0]}),
        ("freeze_layers", {"type": "int", "low": -1, "high": 2}),
    ],
)
def test_a_bad_head_option_choice_names_the_search_key(key: str, dist: dict) -> None:
    raw = _smoke_raw()
    raw["search"] = {key: dist}
    with pytest.raises(InputError, match=f"^heads.yaml: search: {key}"):
        parse_space(raw, "heads.yaml")


def test_layerwise_preset_searches_every_head_option() -> None:
    search = load_space("layerwise").search
    assert set(HEAD_OPTION_COLUMNS) <= set(search)
    assert None in search["head_hidden"].choices
    # plain [CLS] is left out: on MiniLM's lower layers it keeps a head at the label prior
    assert set(search["pooling"].choices) == {"mean", "cls_mean"}


def test_paper_preset_pins_the_papers_head() -> None:
    space = load_space("paper")
    pinned = {k: space.trial[k] for k in HEAD_OPTION_COLUMNS}  # written out, not defaulted
    assert pinned == {k: getattr(TrialConfig(), k) for k in HEAD_OPTION_COLUMNS}
    assert pinned == {"pooling": "cls", "head_norm": "none", "head_hidden": None,
                      "freeze_layers": 0}


def test_quick_preset_reads_mean_pooled_standardized_features() -> None:
    config = load_space("quick").base_config()
    assert (config.pooling, config.head_norm) == ("mean", "batchnorm")


def _tune(**tune: object) -> SpaceFile:
    raw = yaml.safe_load(preset_path("smoke").read_text())
    del raw["tune"]["mode"]
    raw["tune"].update(tune)
    return parse_space(raw, "mo.yaml")


def test_a_metric_list_is_a_multi_objective_search_with_each_metrics_own_direction() -> None:
    tune = _tune(metric=["dev/rp_macro", "cost/forward_ms_per_doc"]).tune
    assert tune.multi_objective
    assert (tune.metrics, tune.modes) == (("dev/rp_macro", "cost/forward_ms_per_doc"),
                                          ("max", "min"))
    single = _tune(metric="dev/loss").tune
    assert (single.metric, single.mode, single.multi_objective) == ("dev/loss", "min", False)


def test_a_search_may_optimize_the_f1_of_label_sets_but_not_their_thresholds() -> None:
    tune = _tune(metric="dev/f1_micro").tune
    assert (tune.metric, tune.mode) == ("dev/f1_micro", "max")
    assert _tune(metric=["dev/f1_macro_L2", "cost/encoder_layers"]).tune.modes == ("max", "min")
    with pytest.raises(InputError, match="unknown metric 'dev/f1_threshold_L1'"):
        _tune(metric="dev/f1_threshold_L1")


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"metric": ["dev/rp_macro", "cost/encoder_layers"], "mode": ["max"]},
         "^mo.yaml: tune: mode: 1 modes for 2 metrics"),
        ({"metric": ["dev/rp_macro", "dev/rp_macro"]}, "^mo.yaml: tune: metric: a metric is"),
        ({"metric": ["dev/rp_macro", "cost/encoder_layers"], "mode": "max"},
         r"^mo.yaml: tune: mode: one mode \('max'\) for 2 metrics"),
        ({"metric": ["dev/rp_macro", "cost/watts"]}, "^mo.yaml: tune: metric: unknown metric"),
        ({"metric": ["dev/rp_macro", "cost/encoder_layers"], "mode": ["max", "up"]},
         "^mo.yaml: tune: mode: must be max or min"),
        ({"metric": ["dev/rp_macro", "cost/forward_ms_per_doc"], "scheduler": "asha"},
         "^mo.yaml: tune: scheduler: asha stops trials at epochs, whose reports lack "
         "cost/forward_ms_per_doc"),
        ({"metric": "test/rp_macro", "scheduler": "asha"},
         "^mo.yaml: tune: scheduler: .* lack test/rp_macro"),
        ({"first_seed": -1}, "^mo.yaml: tune: first_seed: must be >= 0"),
        ({"algorithm": "cmaes"}, "^mo.yaml: tune: algorithm: must be tpe, random, nsga2, grid"),
    ],
)
def test_a_bad_objective_names_the_file_section_and_key(tune: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _tune(**tune)


def test_asha_with_several_metrics_is_a_multi_objective_early_stopping_search() -> None:
    tune = _tune(metric=["dev/rp_macro", "cost/encoder_layers"], scheduler="asha").tune
    assert tune.scheduler == "asha" and tune.modes == ("max", "min")


def test_fixed_points_run_seeds_from_first_seed_and_the_sampler_gets_the_first() -> None:
    space = _tune(seeds=2, first_seed=100)
    assert {p["seed"] for p in fixed_points(space, 12, COUNTS_3)} == {100, 101}
    trial = optuna.trial.FixedTrial({"variant": "FLAT", "seed": 101})
    define_by_run(space, 12, COUNTS_3)(trial)
    assert trial.params["seed"] == 101


def test_a_variants_entry_may_be_an_assignment_string() -> None:
    raw = yaml.safe_load(preset_path("smoke").read_text())
    raw["assignment"] = {"space": "variants", "variants": ["FLAT", "L1:2|L2:3+4|L3:6"]}
    points = fixed_points(parse_space(raw), 6, COUNTS_3)
    assert [p["variant"] for p in points] == ["FLAT", "L1:2|L2:3+4|L3:6"]
    raw["assignment"]["variants"] = ["L1:2|L2:9"]
    with pytest.raises(InputError, match="^x.yaml: assignment: variants: 'L1:2|L2:9' is neither"):
        fixed_points(parse_space(raw, "x.yaml"), 6, COUNTS_3)


def test_the_pareto_preset_trades_quality_against_layers_run() -> None:
    space = load_space("pareto")
    tune = space.tune
    assert tune.metrics == ("dev/rp_macro", "cost/encoder_layers") and tune.scheduler == "asha"
    # its enqueued trials run 3, 4, 5 and 6 layers: the front has more than one cost to show
    named = named_variants(6, 3, COUNTS_3)
    tops = []
    for point in fixed_points(space, 6, COUNTS_3):
        spec = assignment_of(point, 6, COUNTS_3, space)
        assignment = named.get(spec) or LayerAssignment.from_string(spec)
        tops.append(max(assignment.layers_used(6)))
    assert tops == [3, 4, 5, 6, 6]


def test_every_distribution_is_built_as_optuna_will_suggest_it() -> None:
    """A distribution that passes the file's checks reaches `suggest_*` in a trial: every one
    of them is built once while the file is read, so Optuna's refusals surface there."""
    from hiersearch.search.dimension import Dimension

    built = Dimension.parse({"type": "int", "low": 8, "high": 32, "step": 8}, "k")
    assert built.optuna_distribution() == optuna.distributions.IntDistribution(8, 32, step=8)
    dimension = Dimension.parse({"type": "uniform", "low": 0.0, "high": 0.3, "step": 0.1}, "k")
    built = dimension.optuna_distribution()
    assert isinstance(built, optuna.distributions.FloatDistribution) and built.step == 0.1


@pytest.mark.parametrize(
    ("dist", "said"),
    [
        ({"type": "uniform", "low": 0.0, "high": 0.3, "step": 0}, "`step > 0` must hold"),
        ({"type": "uniform", "low": 0.0, "high": 0.3, "step": "0.1"}, "step: expected a number"),
        ({"type": "int", "low": 1, "high": 4, "step": 1.5}, "step: expected an integer"),
        ({"type": "int", "low": 1, "high": 2, "step": 5}, "not divisible by `step`"),
        ({"type": "categorical", "choices": [[16, 32]]}, "Choices for a categorical"),
    ],
)
def test_distributions_optuna_refuses_are_input_errors_naming_the_key(
    dist: dict[str, object], said: str
) -> None:
    raw = {"trial": {"model": "tiny:4x16"}, "search": {"head_hidden": dist}}
    if dist["type"] == "uniform":
        raw["search"] = {"dropout": dist}
    with pytest.raises(InputError, match="space.yaml: search: ") as caught:
        parse_space(raw, "space.yaml")
    assert said in str(caught.value)


def test_a_space_file_with_the_deprecated_bf16_flag_warns_once_and_runs_in_fp32() -> None:
    import warnings

    raw = {"name": "old", "trial": {"bf16": False, "model": "tiny:12x32"},
           "search": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space = parse_space(raw, "old.yaml")
        base = space.base_config()
    notes = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert notes == ["old.yaml: trial: bf16 is deprecated and reads as precision: fp32; "
                     "write that instead"]
    assert base.precision == "fp32"


def _space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    return path


def test_a_key_given_twice_in_a_section_is_refused_naming_both_lines(tmp_path: Path) -> None:
    path = _space_file(tmp_path, "name: x\ntrial:\n  lr: 0.001\n  epochs: 1\n  lr: 0.002\n")
    with pytest.raises(InputError) as refused:
        load_space(path)
    assert str(refused.value) == (
        f"{path}: trial: key 'lr' is given twice (lines 3 and 5); a YAML reader would keep "
        "the last one silently: keep one"
    )


def test_a_section_given_twice_at_the_top_level_is_refused(tmp_path: Path) -> None:
    path = _space_file(tmp_path, "trial:\n  lr: 0.001\nname: x\ntrial:\n  epochs: 2\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: key 'trial' .*lines 1 and 4"):
        load_space(path)


def test_a_key_given_twice_deep_in_a_flow_mapping_is_refused(tmp_path: Path) -> None:
    text = "search:\n  dropout: {type: categorical, choices: [0, 0.1], choices: [0.2]}\n"
    with pytest.raises(InputError, match=r"search: dropout: key 'choices' .*both on line 2"):
        load_space(_space_file(tmp_path, text))


def test_anchors_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = (
        "name: x\nsearch:\n  lr: &rate {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n"
        "  head_lr:\n    <<: *rate\n    high: 1.0e-1\n"
    )
    space = load_space(_space_file(tmp_path, text))
    assert space.search["head_lr"].raw == {"type": "loguniform", "low": 1e-5, "high": 0.1}


# ----------------------------------------------------------------------------- 12 x 6 on HPO

HPO6_COUNTS = [18, 52, 126, 267, 499, 1070]  # `data hpo --levels 6`, with or without shallow
EUROVOC_COUNTS = [21, 127, 567, 3861, 2284, 481]
PAPER_TABLE = {  # the paper's Table 1 layout (12 layers x 6 levels), DESIGN.md's variant table
    "LAST-SIX": "L1:7|L2:8|L3:9|L4:10|L5:11|L6:12",
    "ONE-BY-ONE": "L1:2|L2:4|L3:6|L4:8|L5:10|L6:12",
    "IN-PAIRS": "L1:1+2|L2:3+4|L3:5+6|L4:7+8|L5:9+10|L6:11+12",
    "HYBRID": "L1:4|L2:5|L3:6+7|L4:8+9|L5:10+11|L6:12",
}


def _resolved(points: list[dict], key: str = "variant") -> list[str]:
    from hiersearch.trial.recipe import resolve_assignment

    specs = dict.fromkeys(str(p[key]) for p in points)
    return [resolve_assignment(s, 12, HPO6_COUNTS).to_string() for s in specs]


def test_the_12x6_preset_runs_the_papers_table_on_hpo_at_6_levels_with_3_seeds() -> None:
    space = load_space("hpo6_mpnet_heads")
    assert (space.data.source, space.data.depth, space.data.keep_shallow) == ("hpo", 6, True)
    assert space.data.train_docs is None and space.trial["freeze_layers"] == "all"
    points = fixed_points(space, 12, HPO6_COUNTS)
    assert len(points) == 6 * 3 and {p["seed"] for p in points} == {0, 1, 2}
    assert _resolved(points) == [
        "FLAT",
        PAPER_TABLE["LAST-SIX"],
        PAPER_TABLE["ONE-BY-ONE"],
        PAPER_TABLE["IN-PAIRS"],
        # the paper's rule (pairs for the levels with the most labels) on HPO's counts
        "L1:4|L2:5|L3:6|L4:7+8|L5:9+10|L6:11+12",
        PAPER_TABLE["HYBRID"],  # the table's own, as it lays it out
    ]


def test_the_papers_table_is_the_named_variants_on_its_eurovoc_counts() -> None:
    variants = named_variants(12, 6, EUROVOC_COUNTS)
    assert {name: variants[name].to_string() for name in PAPER_TABLE} == PAPER_TABLE
    assert variants["FLAT"].flat


def test_the_12x6_search_screens_200_tpe_trials_over_the_shared_space_then_finetunes() -> None:
    from hiersearch.search.assignment_space import in_space
    from hiersearch.search.stages import finetune_space, screen_size, screening_space

    space = load_space("hpo6_mpnet_search")
    screen = screening_space(space, 12, 6)
    assert screen.tune.algorithm == "tpe" and screen_size(screen) >= 200
    assert screen.trial["freeze_layers"] == "all" and screen.assignment.options().shared
    enqueued = fixed_points(screen, 12, HPO6_COUNTS)
    assert len(enqueued) == 7 and all(p["seed"] == 0 for p in enqueued)
    define = define_by_run(screen, 12, HPO6_COUNTS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        define(trial)
        drawn = LayerAssignment.from_string(
            assignment_of(trial.params, 12, HPO6_COUNTS, screen))
        assert in_space(drawn, 12, 6, screen.assignment.options())
        study.tell(trial, 0.0)
    top = ["L1:12|L2:12|L3:12|L4:11+12|L5:11+12|L6:11+12", "FLAT", "LAST-SIX"]
    finetune = finetune_space(space, top)
    assert finetune.trial["freeze_layers"] == 6 and finetune.trial["model"] == "mpnet"
    points = fixed_points(finetune, 12, HPO6_COUNTS)
    assert len(points) == 3 * 3 and _resolved(points)[0] == top[0]


def test_a_shared_assignment_space_is_read_and_overlap_is_refused_with_it() -> None:
    raw = _smoke_raw()
    raw["assignment"] = {"space": "shared", "max_width": 2}
    assert parse_space(raw, "x.yaml").assignment.options().shared
    raw["assignment"]["overlap"] = True
    with pytest.raises(InputError, match="^x.yaml: assignment: overlap: a shared space already"):
        parse_space(raw, "x.yaml")
