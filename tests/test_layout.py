"""Project rules that span modules: the pure pipeline steps never import Ray.

import-linter (`lint-imports` in CI) checks the same statically; this checks what actually gets
imported at run time, where a module-level import hidden behind a helper would show."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path

# Pure steps (and the trial loop, whose Ray runners import Ray only when used).
PURE = [
    "data", "model", "metrics", "report", "trial", "search.space", "search.assignment_space",
    "search.dimension", "cli",
]


def test_pure_modules_import_without_ray() -> None:
    code = (
        "import sys\n"
        + "".join(f"import hiersearch.{name}\n" for name in PURE)
        + "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


def test_every_search_space_opens_with_a_launch_command_naming_files_that_exist() -> None:
    assert SPACES
    for path in SPACES:
        lines = path.read_text().splitlines()
        launches = [line.split(":", 1)[1] for line in lines[:3] if line.startswith("# Launch:")]
        assert launches, f"{path.name}: no '# Launch:' line at the top"
        for words in map(shlex.split, launches):
            assert words[0] == "hiersearch", path.name
            for flag, value in zip(words, words[1:], strict=False):
                if flag == "--space":
                    assert (REPO / value).is_file(), f"{path.name}: --space {value}"
                if flag == "--preset":
                    assert (REPO / "search_spaces" / f"{value}.yaml").is_file(), path.name


def test_the_installed_package_ships_every_search_space() -> None:
    installed = resources.files("hiersearch.search_spaces")
    shipped = sorted(p.name for p in installed.iterdir() if p.name.endswith(".yaml"))
    assert shipped == [p.name for p in SPACES]


MODULE_TABLE = REPO / "docs" / "architecture.md"  # linked from the README


def _module_table_paths() -> set[str]:
    """The paths the module table names; a bare file name is in the folder of the path before
    it in the same cell (`hiersearch/metrics/ranking.py`, `goldrank.py`)."""
    text = MODULE_TABLE.read_text()
    table = text[text.index("| module | responsibility |") :].split("\n\n", 1)[0]
    paths: set[str] = set()
    for row in table.splitlines()[2:]:
        folder = ""
        for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
            path = name if "/" in name else f"{folder}/{name}"
            folder = path.rsplit("/", 1)[0]
            paths.add(path)
    return paths


def test_the_readme_links_the_module_table() -> None:
    assert "(docs/architecture.md)" in (REPO / "README.md").read_text()


def test_the_module_table_matches_the_tree() -> None:
    named = _module_table_paths()
    modules = {
        str(p.relative_to(REPO))
        for p in (REPO / "hiersearch").rglob("*.py")
        if p.name != "__init__.py"
    }
    assert modules - named == set(), f"modules missing from the module table of {MODULE_TABLE}"
    for path in named:
        assert list(REPO.glob(path)), f"the module table names {path}, not in the tree"
