"""Project rules that span modules: the pure pipeline stages never import Ray.

import-linter (`lint-imports` in CI) checks the same statically; this checks what actually gets
imported at run time, where a module-level import hidden behind a helper would show."""

from __future__ import annotations

import subprocess
import sys

# Pure stages (and the trial loop, whose Ray runners import Ray only when used).
PURE = ["data", "model", "metrics", "report", "trial", "search.space", "search.assignments", "cli"]


def test_pure_modules_import_without_ray() -> None:
    code = (
        "import sys\n"
        + "".join(f"import hiersearch.{name}\n" for name in PURE)
        + "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
