"""Experiment tracking with MLflow (the optional extra `hiersearch[mlflow]`): every trial of a
search becomes an MLflow run of one MLflow experiment named after the search.

Ray Tune's `MLflowLoggerCallback` logs on the driver: one run per trial, its searched
parameters, and every report's numeric metrics at its training iteration (the epochs, then the
final report with the test and utilization metrics). What Tune does not know is added when a
trial ends: the trial's artifacts (the heatmaps, the utilization numbers, the resolved
config.json, the final metrics), read from the trial's directory in the experiment storage (a
bucket included), and its variant, assignment and stop reason as run tags.

Imported by search/run.py only when a tracking URI is given (it imports Ray).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from hiersearch import metrics as M
from hiersearch.errors import InputError

# The tracking URI when --mlflow is not given
MLFLOW_URI_ENV = "HIERSEARCH_MLFLOW_URI"
# The run tag that names the hiersearch experiment directory (path or URI) of a run
EXPERIMENT_TAG = "hiersearch.experiment"
# Report keys whose (text) values become run tags
_TAG_KEYS = (M.TRIAL_VARIANT, M.TRIAL_ASSIGNMENT, M.TRIAL_STOP_REASON)
# The trial's artifact files that become MLflow artifacts (not the TensorBoard events)
_ARTIFACT_SUFFIXES = (".png", ".json")


def mlflow_name(key: str) -> str:
    """A metric key as MLflow accepts it (letters, digits and _-. :/): 'dev/rp@5' ->
    'dev/rp_at_5'."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))


def check_mlflow() -> None:
    """An InputError (before Ray starts) when tracking is asked for without MLflow."""
    if importlib.util.find_spec("mlflow") is None:
        raise InputError(
            "MLflow is not installed: pip install 'hiersearch[mlflow]'",
            where=f"--mlflow (or {MLFLOW_URI_ENV})",
        )


class TrialMLflowCallback(MLflowLoggerCallback):
    """Tune's MLflow logger plus each trial's artifacts and its identity as tags."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        named = {mlflow_name(key): value for key, value in result.items()}
        super().log_trial_result(iteration, trial, named)
        tags = {key: str(result[key]) for key in _TAG_KEYS if result.get(key) is not None}
        if tags:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.tracking_uri)
            for key, value in tags.items():
                client.set_tag(self._trial_runs[trial], key, value)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        with tempfile.TemporaryDirectory(prefix="hiersearch-mlflow-") as local:
            if _copy_artifacts(trial.storage.storage_filesystem, f"{trial.path}/artifacts",
                               local):
                self.mlflow_util.save_artifacts(run_id=self._trial_runs[trial], dir=local)
        super().log_trial_end(trial, failed)


def _copy_artifacts(filesystem: Any, source: str, target: str) -> bool:
    """The trial's artifact files (pyarrow filesystem) into a local directory; whether any."""
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(source, allow_not_found=True)
    copied = False
    for info in filesystem.get_file_info(selector):
        if info.type == pyarrow.fs.FileType.File and info.base_name.endswith(_ARTIFACT_SUFFIXES):
            with filesystem.open_input_stream(info.path) as stream:
                data = stream.read()
            with open(os.path.join(target, info.base_name), "wb") as handle:
                handle.write(data)
            copied = True
    return copied


def mlflow_callbacks(uri: str | None, name: str, experiment: str) -> list[Any]:
    """The Tune callbacks that log the search `name` (directory `experiment`) to the MLflow
    tracking store at `uri`; none without a URI."""
    if not uri:
        return []
    check_mlflow()
    return [TrialMLflowCallback(uri, experiment_name=name, tags={EXPERIMENT_TAG: experiment})]
