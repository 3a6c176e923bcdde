"""Shaping and exporting the table of trials: a hand-made table, and the table read from
real Ray 2.60 experiment directories (trimmed copies in fixtures/).

fixtures/leaderboard/finished: 8 trials that completed (FLAT and LAST-SIX, lr 1e-5 / 3e-5,
seeds 1 and 2) and one that raised ValueError; asha: one trial stopped by ASHA after one report
and one that completed; killed: two trials whose driver was killed with SIGKILL mid-run.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from hiersearch.errors import InputError
from hiersearch.report import leaderboard as lb
from hiersearch.report import results

FIXTURES = Path(__file__).parents[1] / "fixtures" / "leaderboard"


def _row(df: pd.DataFrame, trial_id: str) -> pd.Series:
    return df.set_index("trial_id").loc[trial_id]


@pytest.fixture(scope="module")
def finished() -> pd.DataFrame:
    return results.load_experiments([str(FIXTURES / "finished")])


def _hand_table() -> pd.DataFrame:
    """Two variants, two configs (lr) x two seeds each, plus rows paper_table must ignore."""
    rows = [
        # variant, lr, seed, status, dev macro, dev L1, test L1, test macro
        ("LAST-SIX", 1e-5, 1, "terminated", 0.70, 0.80, 0.810, 0.700),
        ("LAST-SIX", 1e-5, 2, "terminated", 0.72, 0.82, 0.830, 0.720),
        ("LAST-SIX", 3e-5, 1, "terminated", 0.60, 0.70, 0.990, 0.990),
        ("LAST-SIX", 3e-5, 2, "terminated", 0.62, 0.72, 0.990, 0.990),
        ("FLAT", 1e-5, 1, "terminated", 0.50, 0.60, 0.600, 0.500),
        ("FLAT", 1e-5, 2, "stopped early", 0.99, 0.99, 0.990, 0.990),
        ("FLAT", 3e-5, 1, "errored", None, None, None, None),
    ]
    columns = [
        "variant",
        "lr",
        "seed",
        "status",
        "dev/rp_macro",
        "dev/rp_L1",
        "test/rp_L1",
        "test/rp_macro",
    ]
    df = pd.DataFrame(rows, columns=columns)
    df["trial_id"] = [f"t{i}" for i in range(len(df))]
    return df


# --- shaping ---------------------------------------------------------------------------------


def test_where_filters_with_backticked_metric_columns(finished: pd.DataFrame) -> None:
    out = lb.filter_rows(finished, "`dev/rp_macro` > 0.6 and variant == 'LAST-SIX'")
    assert len(out) == 4 and set(out["variant"]) == {"LAST-SIX"}
    assert out.attrs["metric"] == "dev/rp_macro"


def test_bad_where_is_an_input_error_naming_the_option(finished: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="--where"):
        lb.filter_rows(finished, "`dev/nope` > 0.5")
    with pytest.raises(InputError, match="--where"):
        lb.filter_rows(finished, "variant ==")


def test_group_by_variant_gives_mean_std_and_trial_count() -> None:
    df = _hand_table()
    out = lb.group_rows(df, "variant").set_index("variant")
    assert out.loc["LAST-SIX", "trials"] == 4
    assert out.loc["LAST-SIX", "dev/rp_macro"] == pytest.approx(0.66)
    # sample std of 0.70 0.72 0.60 0.62: sqrt(((.04^2 + .06^2) * 2) / 3)
    assert out.loc["LAST-SIX", "dev/rp_macro std"] == pytest.approx(math.sqrt(0.0104 / 3))
    assert out.loc["FLAT", "dev/rp_L1"] == pytest.approx(0.795)  # the errored NaN is skipped
    assert "lr" not in out.columns and "seed std" not in out.columns


def test_group_by_an_unknown_column_is_an_input_error(finished: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="--group-by.*variant"):
        lb.group_rows(finished, "variants")


def test_sort_defaults_to_the_experiment_metric_best_first_missing_last(
    finished: pd.DataFrame,
) -> None:
    out = lb.sort_rows(finished, None)
    assert list(out["dev/rp_macro"][:8]) == sorted(finished["dev/rp_macro"][:8], reverse=True)
    assert out["dev/rp_L1"].iloc[-1] != out["dev/rp_L1"].iloc[-1]  # NaN (the errored trial)


def test_sort_by_a_loss_is_ascending_unless_told(finished: pd.DataFrame) -> None:
    ascending = lb.sort_rows(finished, "dev/loss")["dev/loss"].dropna()
    assert ascending.is_monotonic_increasing
    assert lb.sort_rows(finished, "dev/loss", "max")["dev/loss"].dropna().is_monotonic_decreasing


def test_top_keeps_the_first_k_rows(finished: pd.DataFrame) -> None:
    out = lb.top(lb.sort_rows(finished, "dev/rp_macro"), 2)
    assert list(out["trial_id"]) == ["f18e3_00006", "f18e3_00005"]
    with pytest.raises(InputError, match="--top"):
        lb.top(finished, 0)


def test_sort_by_an_unknown_column_is_an_input_error(finished: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="--sort.*dev/rp_macro"):
        lb.sort_rows(finished, "dev/rp_macr")


# --- paper table -----------------------------------------------------------------------------


def test_paper_table_rows_follow_the_papers_variant_order() -> None:
    df = pd.concat(
        [
            _hand_table().assign(variant=v)
            for v in ["HYBRID", "IN-PAIRS", "zz", "LAST-TWO", "ONE-BY-ONE", "FLAT"]
        ]
    )
    out = lb.paper_table(df, "dev", 1)
    assert list(out["variant"]) == ["FLAT", "LAST-TWO", "ONE-BY-ONE", "IN-PAIRS", "HYBRID", "zz"]
    assert list(out.columns) == ["variant", "L1", "micro", "macro", "seeds"]


def test_paper_table_dev_shows_the_best_config_as_mean_pm_std_percent() -> None:
    out = lb.paper_table(_hand_table(), "dev", 1).set_index("variant")
    # LAST-SIX lr=1e-5 (mean dev macro 0.71 beats 0.61): L1 80, 82 -> 81.0 +- 1.4 (sample std)
    assert out.loc["LAST-SIX", "L1"] == "81.0 ± 1.4"
    assert out.loc["LAST-SIX", "macro"] == "71.0 ± 1.4"
    assert out.loc["LAST-SIX", "micro"] == "n/a"  # not reported
    # FLAT: only one finished trial, so no spread
    assert (out.loc["FLAT", "L1"], out.loc["FLAT", "seeds"]) == ("60.0", 1)


def test_paper_table_test_reports_the_best_dev_config_not_the_best_test() -> None:
    out = lb.paper_table(_hand_table(), "test").set_index("variant")
    assert list(out.columns) == ["L1", "micro", "macro", "seeds"]  # levels found: 1
    assert out.loc["LAST-SIX", "L1"] == "82.0 ± 1.4"  # not the 99.0 of lr=3e-5
    assert out.loc["LAST-SIX", "seeds"] == 2


def test_paper_table_from_a_real_experiment(finished: pd.DataFrame) -> None:
    out = lb.paper_table(finished, "test", 3)
    assert list(out["variant"]) == ["FLAT", "LAST-SIX"]  # ERR has no finished trial
    assert list(out["seeds"]) == [2, 2]
    assert all(" ± " in cell for cell in out.iloc[:, 1:6].to_numpy().ravel())


def test_paper_table_groups_configurations_with_missing_values() -> None:
    df = _hand_table().assign(max_steps_per_epoch=None)  # a null param: text "None", not NaN
    out = lb.paper_table(df, "dev", 1).set_index("variant")
    assert out.loc["LAST-SIX", "L1"] == "81.0 ± 1.4"


def _with_head(df: pd.DataFrame, pooling: str = "mean") -> pd.DataFrame:
    return df.assign(pooling=pooling, head_norm="batchnorm", head_hidden=None, freeze_layers=0)


SHARED_HEAD = "pooling=mean, head_norm=batchnorm, head_hidden=none, freeze_layers=0"


def test_paper_table_names_the_head_its_rows_share() -> None:
    out = lb.paper_table(_with_head(_hand_table()), "dev", 1)
    assert out.attrs["head"] == SHARED_HEAD
    assert "head" not in out.columns


def test_paper_table_shows_the_head_options_that_differ_in_a_column() -> None:
    df = _with_head(_hand_table())
    df.loc[(df["variant"] == "LAST-SIX") & (df["lr"] == 3e-5), "pooling"] = "cls"
    df.loc[df["variant"] == "FLAT", "head_hidden"] = 64
    out = lb.paper_table(df, "test", 1).set_index("variant")
    assert out.attrs["head"] == "pooling=mean, head_norm=batchnorm, freeze_layers=0"
    assert out.loc["FLAT", "head"] == "head_hidden=64"
    assert out.loc["LAST-SIX", "head"] == "head_hidden=none"  # the best dev configuration's
    assert list(out.columns)[:2] == ["head", "L1"]


def test_paper_table_picks_the_head_of_the_best_dev_configuration() -> None:
    df = _with_head(_hand_table())
    df.loc[(df["variant"] == "LAST-SIX") & (df["lr"] == 3e-5), "pooling"] = "cls"
    out = lb.paper_table(df, "dev", 1)
    assert out.attrs["head"] == SHARED_HEAD and "head" not in out.columns


def test_paper_table_of_trials_without_head_options_names_no_head(
    finished: pd.DataFrame,
) -> None:
    out = lb.paper_table(finished, "dev", 3)
    assert "head" not in out.attrs and "head" not in out.columns


def test_paper_table_text_puts_the_head_under_the_title() -> None:
    text = lb.paper_table_text(lb.paper_table(_with_head(_hand_table()), "test", 1), "test")
    lines = text.splitlines()
    assert lines[1].startswith("R-Precision (%) on test")
    assert lines[2] == f"head: {SHARED_HEAD}"
    assert lines[3].split() == ["variant", "L1", "micro", "macro", "seeds"]


# --- rendering and export --------------------------------------------------------------------


def test_table_format_shows_four_decimals_and_readable_small_numbers(
    finished: pd.DataFrame,
) -> None:
    text = lb.render(lb.top(lb.sort_rows(finished, None), 1), "table")
    header, line = text.splitlines()
    assert header.split()[:3] == ["experiment", "trial_id", "status"]
    assert "0.6900" in line and "1e-05" in line


def test_markdown_has_a_header_rule_and_one_line_per_row(finished: pd.DataFrame) -> None:
    lines = lb.render(finished, "markdown").splitlines()
    assert len(lines) == 2 + len(finished)
    assert lines[0].startswith("| experiment | trial_id |")
    assert lines[1].startswith("| --- | --- |") and "---:" in lines[1]
    assert "| L1:7\\|L2:8\\|L3:9 |" in lines[-2]  # pipes inside cells are escaped


def test_csv_round_trips(finished: pd.DataFrame) -> None:
    back = pd.read_csv(io.StringIO(lb.render(finished, "csv")))
    assert list(back.columns) == list(finished.columns)
    assert back["dev/rp_macro"].tolist() == pytest.approx(
        finished["dev/rp_macro"].tolist(), nan_ok=True
    )


def test_latex_escapes_special_characters() -> None:
    df = pd.DataFrame({"dev/rp_L1": [0.5], "name_x": ["a&b"], "cell": ["81.9 ± 0.2"]})
    text = lb.render(df, "latex")
    assert text.startswith("\\begin{tabular}{rll}\n\\toprule\n")
    assert "dev/rp\\_L1 & name\\_x & cell \\\\" in text
    assert "0.5000 & a\\&b & 81.9 $\\pm$ 0.2 \\\\" in text
    assert text.endswith("\\bottomrule\n\\end{tabular}\n")


def test_json_has_the_stable_schema_with_nan_as_null(finished: pd.DataFrame) -> None:
    data = json.loads(lb.to_json(finished))
    assert list(data) == ["schema", "columns", "rows"]
    assert data["schema"] == "hiersearch.leaderboard/1"
    assert data["columns"] == list(finished.columns)
    assert all(list(row) == data["columns"] for row in data["rows"])
    errored = next(r for r in data["rows"] if r["trial_id"] == "f18e3_00008")
    assert errored["dev/rp_L1"] is None and errored["stop_reason"] is None
    assert errored["batch_size"] == 8 and isinstance(errored["batch_size"], int)
    assert lb.render(finished, "json") == lb.to_json(finished)


def test_people_read_the_summary_columns_and_machines_get_every_column(
    finished: pd.DataFrame,
) -> None:
    shown = lb.select_columns(finished, None, "table")
    assert list(shown.columns[:6]) == [
        "experiment", "trial_id", "status", "error", "variant", "assignment"]
    assert [c for c in shown.columns if c.startswith(("dev/", "test/"))] == [
        "dev/rp_L1", "dev/rp_L2", "dev/rp_L3", "dev/rp_micro", "dev/rp_macro", "test/rp_macro"]
    assert "batch_size" in shown.columns and "dev/loss" not in shown.columns
    assert "node_id" not in shown.columns and "checkpoint" not in shown.columns
    for fmt in ("csv", "json"):
        assert lb.select_columns(finished, None, fmt).equals(finished)
    assert lb.select_columns(finished, "all", "table").equals(finished)
    picked = lb.select_columns(finished, "trial_id, dev/loss", "markdown")
    assert list(picked.columns) == ["trial_id", "dev/loss"]
    with pytest.raises(InputError, match="--columns"):
        lb.select_columns(finished, "trial_id,dev/lost", "table")


def test_the_summary_shows_dev_and_test_f1_after_r_precision(finished: pd.DataFrame) -> None:
    f1 = ["dev/f1_micro", "dev/f1_macro", "test/f1_micro", "test/f1_macro"]
    table = finished.assign(**{key: 0.5 for key in [*f1, "dev/f1_micro_L1"]})
    table.attrs.update(finished.attrs)
    shown = [c for c in lb.summary_columns(table) if c.startswith(("dev/", "test/"))]
    assert shown[-5:] == ["test/rp_macro", *f1]  # per-level F1: in csv and json only


def test_the_summary_says_which_trials_started_from_trained_heads(
    finished: pd.DataFrame,
) -> None:
    assert "trial/warm_start" not in lb.summary_columns(finished)  # no trial was asked
    said = ["yes", "no: head_hidden 64 here, null in the trained heads' trial"]
    table = finished.assign(**{"trial/warm_start": [said[i % 2] for i in range(len(finished))]})
    table.attrs.update(finished.attrs)
    shown = lb.select_columns(table, None, "table")
    assert "trial/warm_start" in shown.columns
    assert list(shown["trial/warm_start"]) == list(table["trial/warm_start"])
    assert shown.columns.get_loc("trial/warm_start") < shown.columns.get_loc("dev/rp_L1")


def test_the_summary_of_a_grouped_multi_objective_table_keeps_its_costs(
    finished: pd.DataFrame,
) -> None:
    table = finished.assign(**{"cost/encoder_layers": 6.0})
    table.attrs.update(finished.attrs, objectives=[("dev/rp_macro", "max"),
                                                   ("cost/encoder_layers", "min")])
    marked = lb.mark_pareto(table)
    assert lb.summary_columns(marked)[-2:] == ["cost/encoder_layers", "pareto"]
    assert "error" not in lb.summary_columns(marked[marked["error"].isna()])
    grouped = lb.group_rows(marked, "variant")
    assert lb.summary_columns(grouped)[:4] == ["variant", "trials", "dev/rp_L1", "dev/rp_L1 std"]
    assert lb.summary_columns(grouped)[-2:] == [
        "cost/encoder_layers", "cost/encoder_layers std"]
    by_status = lb.group_rows(marked, "status")
    assert lb.summary_columns(by_status)[:3] == ["status", "trials", "dev/rp_L1"]


def test_unknown_format_is_an_input_error(finished: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="--format"):
        lb.render(finished, "xlsx")


@pytest.mark.parametrize("fmt", lb.FORMATS)
def test_export_writes_what_render_returns(
    tmp_path: Path, finished: pd.DataFrame, fmt: str
) -> None:
    path = tmp_path / "out" / f"board.{fmt}"
    lb.export(finished, path, fmt)
    assert path.read_text() == lb.render(finished, fmt)


def test_export_picks_the_format_from_the_suffix(tmp_path: Path, finished: pd.DataFrame) -> None:
    lb.export(finished, tmp_path / "board.md")
    assert (tmp_path / "board.md").read_text() == lb.render(finished, "markdown")
    with pytest.raises(InputError, match="board.xyz"):
        lb.export(finished, tmp_path / "board.xyz")


def test_failed_export_leaves_the_previous_file_intact(
    tmp_path: Path, finished: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "board.csv"
    path.write_text("previous\n")

    def broken(*_: object) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(lb, "render", broken)
    with pytest.raises(RuntimeError):
        lb.export(finished, path, "csv")
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["board.csv"]


def test_failed_write_leaves_the_previous_file_intact(
    tmp_path: Path, finished: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "board.json"
    path.write_text("previous\n")
    monkeypatch.setattr("os.replace", lambda *_: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(InputError, match="^--out: cannot write: disk full"):
        lb.export(finished, path, "json")
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["board.json"]


def _objective_table() -> pd.DataFrame:
    df = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d", "e"],
        "dev/rp_macro": [0.70, 0.65, 0.60, 0.60, float("nan")],
        "cost/encoder_layers": [6.0, 4.0, 4.0, 2.0, 1.0],
    })
    df.attrs["objectives"] = [("dev/rp_macro", "max"), ("cost/encoder_layers", "min")]
    return df


def test_the_pareto_front_keeps_rows_nothing_beats_on_every_metric() -> None:
    marked = lb.mark_pareto(_objective_table())
    # c is beaten by b (better RP at the same cost); e has no RP (an errored trial)
    assert dict(zip(marked["trial_id"], marked["pareto"], strict=True)) == {
        "a": True, "b": True, "c": False, "d": True, "e": False}
    assert list(lb.keep_pareto(marked)["trial_id"]) == ["a", "b", "d"]
    assert lb.keep_pareto(marked).attrs["objectives"] == marked.attrs["objectives"]


def test_equal_rows_are_both_on_the_front() -> None:
    df = _objective_table().iloc[[1, 1]].reset_index(drop=True)
    df.attrs["objectives"] = _objective_table().attrs["objectives"]
    assert list(lb.pareto_front(df, df.attrs["objectives"])) == [True, True]


def test_pareto_needs_a_search_over_several_metrics(finished: pd.DataFrame) -> None:
    assert "pareto" not in lb.mark_pareto(finished).columns
    with pytest.raises(InputError, match="^--pareto: no experiment here searched several"):
        lb.keep_pareto(lb.mark_pareto(finished))
