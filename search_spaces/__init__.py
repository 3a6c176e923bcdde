"""The preset search-space files (YAML), installed as `hiersearch.search_spaces`.

Each opens with its launch command; `hiersearch reproduce --preset NAME` and
`hiersearch search --space NAME` find them in any install. The files are the one list of
presets: each carries its `help:` line (what it runs; corpus; hardware; about how long) and,
when `reproduce` takes it (all its trials are fixed ones), `reproduce: true`.

Listing them imports neither torch nor Optuna (`hiersearch.search.space` does): every command
line builds its `--help` from here.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

__all__ = ["Preset", "preset_lines", "presets"]


class Preset(NamedTuple):
    name: str
    help: str
    reproduce: bool  # whether `hiersearch reproduce --preset NAME` takes it


def presets() -> tuple[str, ...]:
    """The presets' names, one per space file here, in name order."""
    shipped = resources.files(__name__).iterdir()
    return tuple(sorted(p.name.removesuffix(".yaml") for p in shipped if p.name.endswith(".yaml")))


def preset_lines() -> list[Preset]:
    """Every preset's name, `help:` line and `reproduce:` mark, read from its file's top-level
    keys alone (`hiersearch.search.space.load_space` checks them with the rest)."""
    import yaml

    found = []
    for name in presets():
        raw = yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text())
        found.append(Preset(name, str(raw.get("help") or ""), raw.get("reproduce") is True))
    return found
