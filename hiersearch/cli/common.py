"""What several commands share: the exit codes and the refusal of an output that is an input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from hiersearch.errors import InputError

__all__ = ["EXIT_INPUT", "EXIT_OK", "positive_int", "refuse_input_as_output"]

EXIT_OK, EXIT_INPUT = 0, 2  # an internal error exits 1 through Python's own traceback


def refuse_input_as_output(
    option: str, outputs: Sequence[Any], inputs: Sequence[tuple[str, Any]]
) -> None:
    """An output that is one of the command's inputs under whatever name (a relative path, a
    symlink, a hard link) would replace what the command reads: refused before anything is
    read or written. `inputs`: (option, path) pairs; paths that do not exist are no input."""
    from hiersearch.files import same_file

    for output in outputs:
        for source_option, source in inputs:
            if same_file(output, source):
                kind = "directory" if os.path.isdir(output) else "file"
                raise InputError(
                    f"{output} is the same {kind} as {source_option} {source}; writing it "
                    f"would replace the input (choose another {option})",
                    where=option,
                )


def positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"expected a positive integer, got {text!r}", where=option) from None
    if value < 1:
        raise InputError(f"must be >= 1 (got {value})", where=option)
    return value
