"""numba is a hard dependency: without it the metrics say so, and the key names still work."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hiersearch.metrics import goldrank
from hiersearch.metrics.ranking import r_precision


def test_missing_numba_is_an_import_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # what `import numba` sees when absent
    monkeypatch.setattr(goldrank, "_compiled", {})
    with pytest.raises(ImportError, match=r"need numba .*pip install 'numba>=0.60'"):
        r_precision(np.array([[1, 0]]), np.array([[0.9, 0.1]]))


def test_metric_keys_import_without_numba() -> None:
    script = (
        "import sys; sys.modules['numba'] = None;"
        "from hiersearch.metrics import ranking;"
        "print(ranking.rp_macro_key('dev'))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "dev/rp_macro"
