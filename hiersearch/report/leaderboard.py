"""The table of trials (`results.load_experiments`) -> filtered, grouped, sorted, the paper's
per-variant table, and exported as a text table, Markdown, CSV, JSON or LaTeX.

JSON (stable schema): {"schema": "hiersearch.leaderboard/1", "columns": [name, ...],
"rows": [{name: value, ...}, ...]}; every row holds every column in `columns` order; values are
JSON numbers, strings, booleans or null (missing, NaN and infinities are null).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.files import atomic_write_text, check_writable_dir
from hiersearch.metrics.pareto import minimized, nondominated_ranks
from hiersearch.report.results import (
    HEAD_OPTION_COLUMNS,
    MEMBERS_COLUMN,
    NOT_TRIALS,
    STATUS_TERMINATED,
    metric_columns,
    param_columns,
)

SCHEMA = "hiersearch.leaderboard/1"
FORMATS = ("table", "markdown", "csv", "json", "latex")
VARIANT_ORDER = ("FLAT", "LAST-", "ONE-BY-ONE", "IN-PAIRS", "HYBRID")


# --- shaping -------------------------------------------------------------------------------


def _require_column(df: pd.DataFrame, column: str, option: str) -> None:
    if column not in df.columns:
        close = difflib.get_close_matches(column, [str(c) for c in df.columns], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"unknown column {column!r}{hint}", where=option)


def filter_rows(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """pandas `DataFrame.query`; quote columns holding "/" in backticks: `dev/rp_macro` > 0.5."""
    try:
        out = df.query(where, engine="python")
    except Exception as exc:  # pandas raises many types (SyntaxError, KeyError, ...)
        raise _where_error(exc, where) from None
    if not isinstance(out, pd.DataFrame):
        raise InputError("the expression must select rows (a condition)", where="--where")
    out.attrs.update(df.attrs)
    return out


def _where_error(exc: Exception, expression: str) -> InputError:
    """pandas' error for a `--where` expression, in the user's terms."""
    hint = "quote a column holding '/' in backticks: `dev/rp_macro` > 0.5"
    if isinstance(exc, SyntaxError):
        reason = f"cannot parse {expression!r} ({exc.msg}); {hint}"
    elif type(exc).__name__ == "UndefinedVariableError":  # pandas' unknown column
        name = str(exc).split("'")[1] if str(exc).count("'") >= 2 else str(exc)
        reason = f"no column {name!r} in {expression!r}; {hint}"
    else:
        reason = f"cannot evaluate {expression!r}: {str(exc).strip().splitlines()[0]}"
    return InputError(reason, where="--where")


def group_rows(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per value of `by`: "trials" and, for every metric, its mean ("m") and std ("m std")."""
    _require_column(df, by, "--group-by")
    metrics = [m for m in metric_columns(df) if m != by]
    grouped = df.groupby(by, dropna=False, sort=True)
    sizes = grouped.size()
    stats = grouped[metrics].agg(["mean", "std"]).reindex(sizes.index)  # std: ddof=1
    columns: dict[str, Any] = {by: sizes.index, "trials": sizes.to_numpy()}
    for metric in metrics:  # built at once: a column at a time fragments a wide frame
        columns[metric] = stats[(metric, "mean")].to_numpy()
        columns[f"{metric} std"] = stats[(metric, "std")].to_numpy()  # NaN for one trial
    out = pd.DataFrame(columns)
    out.attrs.update(df.attrs, grouped_by=by)
    return out


def sort_rows(df: pd.DataFrame, column: str | None, mode: str | None = None) -> pd.DataFrame:
    """Sort by `column` (default: the experiment metric); missing values last.

    `mode` "max" sorts descending, "min" ascending; when None: the experiment's mode for its
    metric, ascending for losses and text, descending for other numbers.
    """
    metric = df.attrs.get("metric", M.DEFAULT_METRIC)
    column = column or metric
    _require_column(df, column, "--sort")
    if mode is None:
        numeric = pd.api.types.is_numeric_dtype(df[column])
        if column == metric:
            mode = df.attrs.get("mode", M.DEFAULT_MODE)
        else:
            mode = "max" if numeric and not column.endswith("loss") else "min"
    if mode not in ("max", "min"):
        raise InputError(f"mode must be max or min, not {mode!r}", where="--sort")
    order = {"ascending": mode == "min", "na_position": "last", "kind": "stable"}
    try:
        out = df.sort_values(column, **order)
    except TypeError:  # mixed types in one column (e.g. a param given as 8 and "8"): as text
        out = df.sort_values(column, key=lambda s: s.astype(str), **order)
    return out.reset_index(drop=True)


PARETO_COLUMN = "pareto"


def pareto_front(df: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.Series:
    """Whether each row is on the Pareto front of `objectives` ((metric, "max"|"min"), ...):
    no other row is at least as good on every metric and better on one. A row missing a
    metric (an errored trial), or the baseline's row, is not on it."""
    for metric, _ in objectives:
        _require_column(df, metric, "--pareto")
    values = df[[m for m, _ in objectives]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    known = ~np.isnan(values).any(axis=1)
    if "status" in df.columns:  # the baseline and the ensemble are no trials of the search:
        known &= (~df["status"].isin(NOT_TRIALS)).to_numpy()  # neither joins nor hides the front
    front = np.zeros(len(df), dtype=bool)
    points = minimized(values[known], [mode for _, mode in objectives])
    front[known] = nondominated_ranks(points) == 0
    return pd.Series(front, index=df.index, name=PARETO_COLUMN)


def mark_pareto(df: pd.DataFrame) -> pd.DataFrame:
    """The table with a `pareto` column when its experiment searched several metrics."""
    objectives = df.attrs.get("objectives") or []
    if not objectives or df.empty:
        return df
    out = df.copy()
    out[PARETO_COLUMN] = pareto_front(df, objectives)
    out.attrs.update(df.attrs)
    return out


def keep_pareto(df: pd.DataFrame) -> pd.DataFrame:
    """Only the rows on the Pareto front (`--pareto`)."""
    if PARETO_COLUMN not in df.columns:
        raise InputError(
            "no experiment here searched several metrics (tune.metric: [a, b]): there is no "
            "Pareto front to keep",
            where="--pareto",
        )
    out = df[df[PARETO_COLUMN].astype(bool)]
    out.attrs.update(df.attrs)
    return out


ALL_COLUMNS = "all"
# Formats people read: a trial's every metric (R-Precision and nDCG at 1-10 per level, train
# and timing figures) makes a table hundreds of columns wide; csv and json keep all of them.
HUMAN_FORMATS = ("table", "markdown", "latex")
_SUMMARY_IDS = (
    "experiment", "stage", "trial_id", "status", "error", "variant", "assignment", "epochs",
)


def summary_columns(df: pd.DataFrame) -> list[str]:
    """The columns a leaderboard is read by: who the trial is, its searched and head
    parameters, where its weights came from (PBT's exploits, trained heads), dev R-Precision
    per level, micro and macro, test macro, dev and test micro- and macro-F1 (at the
    thresholds tuned on dev), the searched metrics and costs, and the Pareto mark; a grouped
    table keeps the mean and std of those metrics."""
    levels = []
    while M.rp_level_key("dev", len(levels) + 1) in df.columns:
        levels.append(M.rp_level_key("dev", len(levels) + 1))
    searched = [metric for metric, _ in df.attrs.get("objectives") or []]
    metrics = [
        *levels,
        M.rp_micro_key("dev"),
        M.rp_macro_key("dev"),
        M.rp_macro_key("test"),
        *(key(split) for split in ("dev", "test") for key in (M.f1_micro_key, M.f1_macro_key)),
        df.attrs.get("metric", M.DEFAULT_METRIC),
        *searched,
        *(c for c in df.columns if str(c).startswith("cost/") and not str(c).endswith(" std")),
    ]
    metrics = [m for m in dict.fromkeys(metrics) if m in df.columns]
    if df.attrs.get("grouped_by") in df.columns:  # group_rows' shape
        by = [df.attrs["grouped_by"], "trials"]
        return [*by, *(c for m in metrics for c in (m, f"{m} std") if c in df.columns)]
    ids = [c for c in _SUMMARY_IDS if c in df.columns]
    if "error" in ids and df["error"].isna().all():
        ids.remove("error")
    params = [c for c in param_columns(df) if not str(c).startswith("assign/")]
    # a PBT trial's place in its population (search.space.MEMBER_PARAM) says nothing here
    params = [c for c in params if c not in (PARETO_COLUMN, "param/variant", "pbt_member")]
    # whether a trial started from trained heads (a two-stage search's fine-tunes)
    pbt = [c for c in (M.PBT_EXPLOITS, M.PBT_DONOR, M.TRIAL_WARM_START) if c in df.columns]
    tail = [c for c in (PARETO_COLUMN, MEMBERS_COLUMN) if c in df.columns]  # members: long
    return [*ids, *params, *pbt, *metrics, *tail]


def select_columns(df: pd.DataFrame, columns: str | None, fmt: str) -> pd.DataFrame:
    """`--columns`: a comma-separated list, `all`, or by default the summary columns in a
    format people read and every column in csv and json."""
    if columns == ALL_COLUMNS or (columns is None and fmt not in HUMAN_FORMATS):
        return df
    if columns is None:
        wanted = summary_columns(df)
    else:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise InputError(f"unknown column(s) {', '.join(missing)}", where="--columns")
    out = df[wanted]
    out.attrs.update(df.attrs)
    return out


def top(df: pd.DataFrame, k: int) -> pd.DataFrame:
    if k < 1:
        raise InputError(f"must be >= 1, not {k}", where="--top")
    return df.head(k)


def _variant_rank(variant: str) -> tuple[int, str]:
    for rank, prefix in enumerate(VARIANT_ORDER):
        if variant == prefix or (prefix.endswith("-") and variant.startswith(prefix)):
            return rank, variant
    return len(VARIANT_ORDER), variant


def _mean_std(values: pd.Series) -> str:
    values = values.dropna() * 100.0
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"  # one seed: no spread to report
    return f"{values.mean():.1f} ± {values.std():.1f}"


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _head_of(row: pd.Series) -> dict[str, str]:
    """A trial's head options as text ({} when the trial predates them); a null bottleneck
    width reads "none" (one linear layer)."""
    present = [key for key in HEAD_OPTION_COLUMNS if key in row.index]
    if all(_missing(row[key]) for key in present):
        return {}
    return {key: "none" if _missing(row[key]) else str(row[key]) for key in present}


def _describe(options: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in options.items())


def _with_heads(table: pd.DataFrame, heads: list[dict[str, str]]) -> pd.DataFrame:
    """The options all rows share go to attrs["head"] (a line under the table's title); those
    that differ become a `head` column after `variant`, so each row names its own."""
    keys = [key for key in HEAD_OPTION_COLUMNS if any(key in head for head in heads)]
    shared = {k: heads[0].get(k, "-") for k in keys if len({h.get(k, "-") for h in heads}) == 1}
    differ = [key for key in keys if key not in shared]
    if shared:
        table.attrs["head"] = _describe(shared)
    if differ:
        table.insert(1, "head", [_describe({k: h.get(k, "-") for k in differ}) for h in heads])
    return table


def paper_table(df: pd.DataFrame, split: str, levels: int | None = None) -> pd.DataFrame:
    """The paper's Table 1: per variant, R-Precision (%) as "mean ± std" over seeds.

    Only finished trials ("terminated") with a variant count; the experiment's baseline and
    its ensemble, where computed, are the last rows. Per variant the configuration
    (hyper-parameters except seed) with the best mean dev/rp_macro is selected, and its `split`
    numbers over seeds are shown, so the dev and test tables describe the same configuration.
    `levels` defaults to the deepest `<split>/rp_L<n>` column present. The head options the
    rows share are `attrs["head"]`; those that differ, a `head` column.
    """
    if split not in ("dev", "test"):
        raise InputError(f"split must be dev or test, not {split!r}", where="paper_table")
    if levels is None:
        levels = 0
        while M.rp_level_key(split, levels + 1) in df.columns:
            levels += 1
    names = [f"L{n}" for n in range(1, levels + 1)] + ["micro", "macro"]
    keys = [*M.rp_level_keys(split, levels), M.rp_micro_key(split), M.rp_macro_key(split)]
    select = M.rp_macro_key("dev")
    done = df[(df["status"] == STATUS_TERMINATED) & df["variant"].notna()].copy()
    baselines = df[df["status"].isin(NOT_TRIALS)]
    if done.empty:
        return _with_baseline(pd.DataFrame(columns=["variant", *names, "seeds"]), baselines,
                              names, keys)
    for key in [*keys, select]:
        if key not in done.columns:
            done[key] = float("nan")
    config = [c for c in param_columns(done) if c not in ("seed", "param/variant")]
    # configs as text so that missing values and mixed types still group; elementwise str,
    # since pandas 3's astype(str) keeps a missing value missing (a float NaN join rejects)
    done["_config"] = done[config].astype(object).map(str).agg("|".join, axis=1) if config else ""
    table, heads = [], []
    for variant in sorted(done["variant"].unique(), key=_variant_rank):
        trials = done[done["variant"] == variant]
        scores = trials.groupby("_config", sort=False)[select].mean()
        best = scores.sort_values(ascending=False, na_position="last", kind="stable").index[0]
        chosen = trials[trials["_config"] == best]
        row = {"variant": variant}
        row.update({name: _mean_std(chosen[key]) for name, key in zip(names, keys, strict=True)})
        row["seeds"] = len(chosen)
        table.append(row)
        heads.append(_head_of(chosen.iloc[0]))  # seeds of one configuration share its head
    paper = _with_heads(pd.DataFrame(table, columns=["variant", *names, "seeds"]), heads)
    return _with_baseline(paper, baselines, names, keys)


def _with_baseline(
    table: pd.DataFrame, extra: pd.DataFrame, names: list[str], keys: list[str]
) -> pd.DataFrame:
    """The experiment's baseline, then its ensemble, as the table's last rows, named
    "(baseline)" and "(ensemble)" and trained on no seed of their own: what every variant
    above has to beat, and what the variants give together."""
    if extra.empty:
        return table
    rows = []
    for status in NOT_TRIALS:
        for _, found in extra[extra["status"] == status].head(1).iterrows():
            row: dict[str, Any] = {column: "-" for column in table.columns}
            name = str(found["variant"])
            row["variant"] = name if name.startswith(status) else f"{name} ({status})"
            for name, key in zip(names, keys, strict=True):
                value = found.get(key)
                row[name] = "n/a" if _missing(value) else f"{100.0 * float(value):.1f}"
            rows.append(row)
    attrs = dict(table.attrs)
    out = pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)
    out.attrs.update(attrs)
    return out


# --- rendering -----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, float):
        small = value != 0 and not 1e-3 <= abs(value) < 1e6
        return f"{value:.3g}" if small else f"{value:.4f}"  # keep lr=3e-05 readable
    return str(value)


def _cells(df: pd.DataFrame) -> list[list[str]]:
    return [[_cell(v) for v in row] for row in df.itertuples(index=False, name=None)]


def _markdown(df: pd.DataFrame) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = ["---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns]
    body = [line([str(c) for c in df.columns]), line(rule)]
    return "\n".join(body + [line(row) for row in _cells(df)]) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
}


def _latex(df: pd.DataFrame) -> str:
    def escape(text: str) -> str:
        return "".join(_LATEX.get(ch, ch) for ch in text)

    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    lines = [
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",  # booktabs rules, as in papers
        " & ".join(escape(str(c)) for c in df.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(escape(c) for c in row) + r" \\" for row in _cells(df)]
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"


def _jsonable(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars -> Python
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def to_json(df: pd.DataFrame) -> str:
    """The stable JSON form (schema "hiersearch.leaderboard/1", see the module docstring)."""
    columns = [str(c) for c in df.columns]
    rows = [
        {c: _jsonable(v) for c, v in zip(columns, row, strict=True)}
        for row in df.itertuples(index=False, name=None)
    ]
    return json.dumps({"schema": SCHEMA, "columns": columns, "rows": rows}, indent=2) + "\n"


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "table":
        if df.empty:
            return "(no trials)\n" if not len(df.columns) else "  ".join(df.columns) + "\n"
        shown = pd.DataFrame(_cells(df), columns=[str(c) for c in df.columns])
        return shown.to_string(index=False) + "\n"
    if fmt == "markdown":
        return _markdown(df)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return to_json(df)
    if fmt == "latex":
        return _latex(df)
    raise InputError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})", where="--format")


def paper_table_text(paper: pd.DataFrame, split: str) -> str:
    """A `paper_table` as text: a title, a line naming the head options its rows share (the
    numbers mean little without the head that produced them), and the table."""
    title = f"R-Precision (%) on {split}, mean ± std over seeds" + (
        " (best dev configuration per variant)" if split == "test" else ""
    )
    head = paper.attrs.get("head")
    return "\n".join(["", title, *([f"head: {head}"] if head else []), render(paper, "table")])


_SUFFIXES = {".txt": "table", ".md": "markdown", ".csv": "csv", ".json": "json", ".tex": "latex"}


def format_of(path: str | os.PathLike[str]) -> str:
    """The format a file's suffix names (.txt .md .csv .json .tex)."""
    fmt = _SUFFIXES.get(os.path.splitext(os.fspath(path))[1].lower())
    if fmt is None:
        raise InputError(
            "cannot tell the format from the suffix; give --format", where=os.fspath(path)
        )
    return fmt


def export(df: pd.DataFrame, path: str | os.PathLike[str], fmt: str | None = None) -> None:
    """Render first, then write atomically: a failure leaves any previous file untouched.

    `fmt` None picks the format from the suffix (.txt .md .csv .json .tex)."""
    text = render(df, fmt or format_of(path))
    try:
        check_writable_dir(os.path.dirname(os.path.abspath(os.fspath(path))))
        atomic_write_text(path, text)
    except OSError as exc:  # a file in the way, a directory that cannot be written
        raise InputError.from_os_error(exc, "--out") from None
