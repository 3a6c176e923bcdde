"""An experiment's Optuna study: where it lives, opened before Ray starts, loaded again for
parameter importances, the optimization history and the Pareto front.

Every search keeps its study in RDB storage: by default a SQLite file in the experiment
directory (`optuna.db`), or any SQLAlchemy URL given with `--study-storage` (PostgreSQL on a
cluster); the study is named after the experiment. `hiersearch.json` records where it is, the
password of a URL left out. `optuna-dashboard sqlite:///runs/NAME/optuna.db` opens it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiersearch.errors import InputError

__all__ = [
    "STUDY_FILE",
    "StudyStorage",
    "default_url",
    "ConstantObjective",
    "group_importances",
    "importances",
    "load_study",
    "open_storage",
    "redact",
    "write_pictures",
]

STUDY_FILE = "optuna.db"
SEED_PARAM = "seed"  # never searched (pinned by the sampler): no importance to show
IMPORTANCE_PNG = "importance.png"
HISTORY_PNG = "history.png"
PARETO_PNG = "pareto_front.png"
TENSORBOARD_DIR = "tensorboard-study"  # `tensorboard --logdir runs/NAME` shows it


@dataclass(frozen=True)
class StudyStorage:
    """Where a search keeps its Optuna study: `url` None keeps it in memory."""

    name: str
    url: str | None
    storage: Any = field(default=None, compare=False, repr=False)  # optuna's RDBStorage

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": redact(self.url) if self.url else None}


def _local_dir(experiment: str) -> Path | None:
    if experiment.startswith("file://"):
        return Path(experiment.removeprefix("file://"))
    return None if "://" in experiment else Path(experiment).expanduser().resolve()


def default_url(experiment: str) -> str | None:
    """The SQLite file in a local experiment directory; None for a bucket (no SQLite there)."""
    local = _local_dir(experiment)
    return None if local is None else f"sqlite:///{local / STUDY_FILE}"


def redact(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: nothing to hide either
        return url


def open_storage(
    experiment: str, name: str, given: str | None, directions: Sequence[str]
) -> StudyStorage:
    """The experiment's study storage, opened (tables created) before Ray starts: a bad URL or
    an unreachable database is an InputError naming --study-storage, and so is a study of the
    same name whose directions differ from this search's."""
    import optuna

    url = given or default_url(experiment)
    if url is None:
        return StudyStorage(name, None)
    where = "--study-storage" if given else f"{experiment}/{STUDY_FILE}"
    local = _local_dir(experiment)
    if not given and local is not None:
        local.mkdir(parents=True, exist_ok=True)
    try:
        storage = optuna.storages.RDBStorage(url)
        existing = {s.study_name: s for s in storage.get_all_studies()}
    except Exception as exc:  # sqlalchemy's errors for bad URLs, drivers, unreachable hosts
        raise InputError(f"cannot open the Optuna study storage: {exc}", where=where) from None
    wanted = ["minimize" if m == "min" else "maximize" for m in directions]
    study = existing.get(name)
    if study is not None and [d.name.lower() for d in study.directions] != wanted:
        raise InputError(
            f"study {name!r} already exists there with directions "
            f"{[d.name.lower() for d in study.directions]}, not {wanted}: choose another --name",
            where=where,
        )
    return StudyStorage(name, url, storage)


def load_study(experiment: str, meta: dict[str, Any], given: str | None = None) -> Any:
    """The experiment's Optuna study, read-only use (`optuna.load_study`)."""
    import optuna

    tune = (meta.get("space") or {}).get("tune") if isinstance(meta.get("space"), dict) else None
    if isinstance(tune, dict) and tune.get("scheduler") == "pbt":
        raise InputError(
            "a population-based training search has no Optuna study (Ray's PBT takes no "
            "searcher; its population was drawn up front): no importances to compute",
            where=experiment,
        )
    recorded = meta.get("study") if isinstance(meta.get("study"), dict) else {}
    name = str(recorded.get("name") or meta.get("name") or Path(experiment).name)
    url = given or recorded.get("url") or default_url(experiment)
    if not url:
        raise InputError(
            "its Optuna study was kept in memory (a bucket experiment started without "
            "--study-storage): no importances to compute",
            where=experiment,
        )
    if "***" in url and not given:
        raise InputError(
            f"the study storage {url} needs its password: pass the URL with --study-storage",
            where=experiment,
        )
    missing = _missing_sqlite_file(url)
    if missing is not None:
        # optuna would create an empty database here, inside a directory it does not own
        raise InputError(
            f"has no Optuna study: {missing} does not exist (an experiment from before "
            "hiersearch kept studies, or a search that never started)",
            where=experiment if not given else "--study-storage",
        )
    try:
        return optuna.load_study(study_name=name, storage=url)
    except Exception as exc:  # KeyError for a missing study, sqlalchemy errors for the rest
        raise InputError(f"cannot load Optuna study {name!r}: {exc}", where=url) from None


def _missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist; None for other databases."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: optuna.load_study says what is wrong with it
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


class ConstantObjective(InputError):
    """The objective has one value in every completed trial: no parameter explains any of
    it, and fANOVA's forest has no variance to split (Optuna raises a RuntimeError)."""


def _complete(study: Any) -> list[Any]:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def _objective(index: int) -> Any:
    return lambda t: t.values[index]


def importances(study: Any, index: int = 0) -> dict[str, float]:
    """Parameter importances for the study's `index`-th objective (fANOVA, see `_evaluate`),
    the seed left out. A parameter only some trials have (one assignment's blocks) is left out:
    these importances cover the parameters every completed trial shares and that vary across
    them; `group_importances` covers the others."""
    complete = _complete(study)
    if len(complete) < 2:
        raise InputError(
            f"importances need at least 2 completed trials (the study has {len(complete)})",
            where="--importance",
        )
    varied = _varied(complete, set.intersection(*(set(t.params) for t in complete)))
    if not varied:
        raise InputError("no parameter varies across the completed trials", where="--importance")
    if _constant(complete, index):
        raise ConstantObjective(
            "not computable: every completed trial has the same value", where="--importance"
        )
    return _evaluate(study, complete, varied, index)


def group_importances(study: Any, index: int = 0) -> list[tuple[int, dict[str, float]]]:
    """The importances within each group of completed trials that share parameters the
    others lack (e.g. the block-assignment trials of a monotone space, whose block bounds
    decide the encoder layers run), over all their varied parameters: (trials, importances)
    per group of at least 3 trials whose values vary."""
    complete = _complete(study)
    if not complete:
        return []
    shared = set.intersection(*(set(t.params) for t in complete))
    groups: dict[frozenset[str], list[Any]] = {}
    for t in complete:
        if set(t.params) - shared:
            groups.setdefault(frozenset(t.params), []).append(t)
    found = []
    for names, trials in sorted(groups.items(), key=lambda g: sorted(g[0])):
        varied = _varied(trials, set(names))
        if len(trials) >= 3 and set(varied) - shared and not _constant(trials, index):
            found.append((len(trials), _evaluate(study, trials, varied, index)))
    return found


def _varied(trials: list[Any], names: set[str]) -> list[str]:
    return sorted(
        p for p in names - {SEED_PARAM} if len({repr(t.params[p]) for t in trials}) > 1
    )


def _constant(trials: list[Any], index: int) -> bool:
    return len({repr(t.values[index]) for t in trials}) == 1


def _evaluate(study: Any, trials: list[Any], params: list[str], index: int) -> dict[str, float]:
    """Optuna's fANOVA evaluator (seeded) over `trials`, copied into a study of their own with
    each parameter's distribution widened to the range they all span.

    Why a copy: a block bound's range depends on the block below it (define-by-run), and
    Optuna's evaluators leave out a parameter whose distribution differs between trials, so
    the assignment never showed. Why fANOVA, not Optuna's default PED-ANOVA: PED-ANOVA compares
    the best 10% of the trials with the rest, one to four trials in a search of tens, and it
    ranked a head learning rate held fixed in most trials above the block bound that alone
    decides `cost/encoder_layers`; fANOVA's random forest fits every trial."""
    import optuna

    dists = {p: _widened([t.distributions[p] for t in trials]) for p in params}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per copy made
    try:
        copy = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials([
        optuna.trial.create_trial(
            params={p: t.params[p] for p in params}, distributions=dists, values=t.values
        )
        for t in trials
    ])
    found = optuna.importance.get_param_importances(
        copy,
        evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        target=_objective(index),
    )
    return {name: float(value) for name, value in found.items()}


def _widened(dists: list[Any]) -> Any:
    """One distribution holding every value of `dists` (a parameter's, across trials)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    first = dists[0]
    if all(d == first for d in dists):
        return first
    if isinstance(first, CategoricalDistribution):
        return CategoricalDistribution(list(dict.fromkeys(c for d in dists for c in d.choices)))
    low, high = min(d.low for d in dists), max(d.high for d in dists)
    log = all(d.log for d in dists)
    if isinstance(first, FloatDistribution):
        return FloatDistribution(low, high, log=log)
    return type(first)(low, high, log=log)  # IntDistribution, step 1: every integer fits


def write_pictures(
    study: Any, directory: str, metrics: Sequence[str], found: dict[str, float] | None = None
) -> list[str]:
    """PNGs of the importances and the optimization history of the first metric, and of the
    Pareto front when the study has several, also as TensorBoard images (`tensorboard-study/`);
    returns the PNGs' paths. `found`: the first metric's `importances`, if already computed;
    empty when they are not computable (then no importance picture)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    os.makedirs(directory, exist_ok=True)
    bars = importances(study) if found is None else found
    plots = [
        # the bars of the importances computed above (fANOVA over a widened copy, see there)
        *([(IMPORTANCE_PNG, lambda: _importance_bars(bars, metrics[0]))] if bars else []),
        (HISTORY_PNG, lambda: vis.plot_optimization_history(
            study, target=_objective(0), target_name=metrics[0])),
    ]
    if len(metrics) > 1:
        plots.append((PARETO_PNG, lambda: vis.plot_pareto_front(
            study, target_names=list(metrics))))
    from torch.utils.tensorboard import SummaryWriter

    written = []
    # the same pictures in TensorBoard, beside the trials' own event files
    with SummaryWriter(os.path.join(directory, TENSORBOARD_DIR)) as board:
        for name, plot in plots:
            with warnings.catch_warnings():  # matplotlib plots are an "experimental" optuna API
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot()
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            path = os.path.join(directory, name)
            figure.savefig(path, dpi=100, bbox_inches="tight")
            board.add_figure(f"study/{name.removesuffix('.png')}", figure, close=True)
            plt.close(figure)
            written.append(path)
    return written


def _importance_bars(found: dict[str, float], metric: str) -> Any:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 0.4 * len(found) + 1.2))
    names = list(found)[::-1]
    axes.barh(names, [found[n] for n in names], color="tab:blue")
    axes.set_xlabel("importance")
    axes.set_title(f"parameter importances for {metric}")
    return axes
