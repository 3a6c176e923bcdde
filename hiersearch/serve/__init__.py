"""Serve: use a trial. Export it as a self-contained model directory (`export`), load it and
score documents with early exit by level (`model`), label documents as JSON Lines
(`predict`) with label sets that respect the hierarchy (`consistency`)."""

from __future__ import annotations

from hiersearch.serve.export import choose_trial, export_trial, write_model_dir
from hiersearch.serve.model import ExportedModel

__all__ = ["ExportedModel", "choose_trial", "export_trial", "write_model_dir"]
