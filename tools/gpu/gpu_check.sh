#!/usr/bin/env bash
# The GPU check: one command on a machine with one NVIDIA GPU (the device machine: H100/H200,
# Python 3.12 with torch and transformers, nothing downloadable), under 8 minutes:
#
#   bash bench/gpu_check.sh                 on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --cpu-dry-run   here: the same steps on the CPU, tiny
# (bench/gpu_check.sh runs this script, tools/gpu/gpu_check.sh)
#
# Steps, each under its own `timeout` within one budget (GPU_CHECK_BUDGET_S, default 460 s),
# each recorded and the next run even when one fails:
#   install         the bundle (.gpu/, tools/gpu/gpu_bundle.sh builds it) -> /tmp/site, when
#                   Python cannot import ray (PYTHONPATH=/tmp/site:repo; hiersearch is not
#                   installed: `python3 -m hiersearch.cli`)
#   env             versions, the device, imports, the bundle's requirements
#   tests           pytest -m gpu on the test files that use the marker
#   throughput      bench/gpu_throughput.py: bf16 and fp32 side by side, BERT-base, seq 512
#   search          tools/gpu/gpu_quarter.yaml: 4 trials, gpus_per_worker 0.25
#   search_check    the most trials running at once (must be 4), from their result rows
#   export/docs/predict_device/compare
#                   the best trial exported, 64 dev documents scored on cuda and on the CPU:
#                   max |p_cuda - p_cpu| within the trial precision's tolerance, top-5 agreement
# The JSON goes to $OUT/gpu_check.json (with $OUT/gpu_check_logs.tar.gz) when OUT is set (the
# device tool returns $OUT), else bench/results/gpu_check-<date>.json; a dry run writes into
# its work directory unless GPU_CHECK_RESULT names a file.
#
# Without an NVIDIA GPU (and without --cpu-dry-run) it says so and exits 0 at once.
# Environment: PYTHON (python3; the dry run prefers .venv/bin/python), GPU_BUNDLE (.gpu),
# GPU_SITE (/tmp/site), GPU_CHECK_BUDGET_S, GPU_CHECK_RESULT.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
REPO=$PWD

MODE=gpu
for arg in "$@"; do
    case $arg in
        --cpu-dry-run) MODE=cpu ;;
        -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-python3}
if [[ $MODE == cpu && -z ${PYTHON:-} && -x .venv/bin/python ]]; then
    PY=.venv/bin/python  # the dry run: the project's own environment, where there is one
fi
if [[ $MODE == gpu ]]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu_check: no NVIDIA GPU here (nvidia-smi finds none): nothing run."
        echo "gpu_check: run it on a GPU machine, or 'bash bench/gpu_check.sh --cpu-dry-run' here."
        exit 0
    fi
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >/dev/null 2>&1; then
        echo "gpu_check: $PY's torch sees no CUDA device: nothing run."
        exit 0
    fi
fi

START=$SECONDS
STARTED=$(date +%s.%N)
if [[ $MODE == gpu ]]; then
    BUDGET=${GPU_CHECK_BUDGET_S:-460}
    DEVICE=cuda
    # caps per step (s); the budget shrinks them when earlier steps ran long
    CAP_INSTALL=60 CAP_ENV=60 CAP_TESTS=150 CAP_THROUGHPUT=150 CAP_SEARCH=210 CAP_PREDICT=60
else
    BUDGET=${GPU_CHECK_BUDGET_S:-1500}
    DEVICE=cpu
    CAP_INSTALL=120 CAP_ENV=120 CAP_TESTS=300 CAP_THROUGHPUT=120 CAP_SEARCH=900 CAP_PREDICT=120
fi
RESERVE=20  # left for the report

WORK=$(mktemp -d /tmp/gck.XXXXXX)
LOGS=$WORK/logs
STEPS=$WORK/steps.jsonl
mkdir -p "$LOGS" "$WORK/home"

# Offline, loopback-only Ray without token auth; HOME and Ray's session under WORK
# (bench/_common.py BENCH_ENV, tests/conftest.py).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 \
    RAY_AIR_NEW_OUTPUT=0 TOKENIZERS_PARALLELISM=false RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300 \
    HOME=$WORK/home HIERSEARCH_DATA=$WORK/data RAY_TMPDIR=$WORK PYTHONUNBUFFERED=1 MPLBACKEND=Agg
unset RAY_ADDRESS

json_str() {  # a JSON string of $1 (no control characters expected)
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

skip() {  # skip NAME REASON
    printf '{"step": %s, "skipped": %s}\n' "$(json_str "$1")" "$(json_str "$2")" >>"$STEPS"
    echo "gpu_check: [$1] skipped: $2"
}

step() {  # step NAME CAP CMD...: CMD under a timeout within the budget, output to logs/NAME.log
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START) - RESERVE))
    local limit=$((cap < left ? cap : left))
    if ((limit < 5)); then
        skip "$name" "no time left in the ${BUDGET} s budget"
        return 1
    fi
    echo "gpu_check: [$name] up to ${limit} s: $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    if [[ -n ${STEP_STDOUT:-} ]]; then
        timeout -k 10 "$limit" "$@" >"$STEP_STDOUT" 2>"$LOGS/$name.log"
    else
        timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    fi
    rc=$?
    t1=$(date +%s.%N)
    printf '{"step": %s, "rc": %d, "start": %s, "end": %s, "timeout_s": %d}\n' \
        "$(json_str "$name")" "$rc" "$t0" "$t1" "$limit" >>"$STEPS"
    echo "gpu_check: [$name] exit $rc after $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s"
    if ((rc != 0)); then tail -n 15 "$LOGS/$name.log" | sed 's/^/    /'; fi
    return "$rc"
}

echo "gpu_check: $MODE mode, work directory $WORK, budget ${BUDGET} s"

# 1. the bundle, where the packages it holds are missing
BUNDLE=${GPU_BUNDLE:-.gpu}
SITE=${GPU_SITE:-/tmp/site}
SITE_ARG=()
if "$PY" -c 'import ray, optuna, datasets' >/dev/null 2>&1; then
    skip install "$PY imports ray, optuna and datasets already"
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
elif [[ -f $BUNDLE/manifest.json ]]; then
    step install "$CAP_INSTALL" "$PY" tools/gpu/gpu_check.py install "$BUNDLE" "$SITE" \
        --out "$WORK/install.json"
    SITE_ARG=(--site "$SITE")
    export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
else
    skip install "no bundle at $BUNDLE (bash tools/gpu/gpu_bundle.sh builds it) and $PY lacks ray"
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi

# 2. what runs here
step env "$CAP_ENV" "$PY" tools/gpu/gpu_check.py env "${SITE_ARG[@]}" --out "$WORK/env.json"

# 3. the tests marked gpu (skipped without CUDA)
mapfile -t GPU_TESTS < <(grep -rlE 'pytest\.mark\.gpu' tests --include='*.py' | sort)
if ((${#GPU_TESTS[@]})); then
    step tests "$CAP_TESTS" "$PY" -m pytest -m gpu -q -p no:cacheprovider "${GPU_TESTS[@]}"
    if [[ -f $LOGS/tests.log ]]; then
        "$PY" tools/gpu/gpu_check.py tests "$LOGS/tests.log" --out "$WORK/tests.json" >/dev/null
    fi
else
    skip tests "no test file in tests/ uses the gpu marker"
fi

# 4. training throughput, bf16 and fp32 side by side (on the CPU: says so and writes its JSON)
step throughput "$CAP_THROUGHPUT" "$PY" bench/gpu_throughput.py --steps 10 --blocks 4 \
    --json "$WORK/throughput.json"

# 5. four trials on a quarter of the GPU each
SPACE=$WORK/space.yaml
EXP=$WORK/runs/quarter
"$PY" tools/gpu/gpu_check.py space --mode "$MODE" --out "$SPACE" >"$LOGS/space.log" 2>&1
STEP_STDOUT=$WORK/search_summary.json step search "$CAP_SEARCH" "$PY" -m hiersearch.cli search \
    --space "$SPACE" --storage "$WORK/runs" --name quarter --json
"$PY" tools/gpu/gpu_check.py cleanup "$WORK" >>"$LOGS/cleanup.log" 2>&1
step search_check 30 "$PY" tools/gpu/gpu_check.py overlap "$EXP" --out "$WORK/search_check.json"

# 6. the best trial exported; predict on the device against the CPU
MODEL=$WORK/model
DOCS=$WORK/docs.jsonl
if step export 60 "$PY" -m hiersearch.cli export "$EXP" --best dev/rp_macro --out "$MODEL" &&
    step docs 30 "$PY" tools/gpu/gpu_check.py docs "$EXP" --docs 64 --out "$DOCS"; then
    step predict_device "$CAP_PREDICT" "$PY" -m hiersearch.cli predict "$MODEL" --input "$DOCS" \
        --out "$WORK/predict_device.jsonl" --top-k 5 --device "$DEVICE"
    step compare "$CAP_PREDICT" "$PY" tools/gpu/gpu_check.py compare "$MODEL" --docs "$DOCS" \
        --device "$DEVICE" --out "$WORK/compare.json"
else
    skip compare "no exported model"
fi
"$PY" tools/gpu/gpu_check.py cleanup "$WORK" >>"$LOGS/cleanup.log" 2>&1

# the report
LOGS_TAR=()
if [[ -n ${OUT:-} ]]; then
    RESULT=${GPU_CHECK_RESULT:-$OUT/gpu_check.json}
    LOGS_TAR=(--logs "$OUT/gpu_check_logs.tar.gz")
elif [[ $MODE == gpu ]]; then
    RESULT=${GPU_CHECK_RESULT:-bench/results/gpu_check-$(date +%Y-%m-%d).json}
else
    RESULT=${GPU_CHECK_RESULT:-$WORK/gpu_check.json}
fi
[[ -n ${OUT:-} ]] || LOGS_TAR=(--logs "$WORK/gpu_check_logs.tar.gz")
"$PY" tools/gpu/gpu_check.py report "$WORK" --mode "$MODE" --started "$STARTED" --out "$RESULT" \
    "${LOGS_TAR[@]}"
echo "gpu_check: logs in $WORK ($((SECONDS - START)) s in all)"
exit 0
