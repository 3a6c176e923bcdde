#!/usr/bin/env bash
# The GPU check, one command on a GPU machine (`--cpu-dry-run`: the same steps here, tiny).
# The script and its helpers live in tools/gpu/ (bench/README.md, "The GPU check").
exec bash "$(dirname "$0")/../tools/gpu/gpu_check.sh" "$@"
