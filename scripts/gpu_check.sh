#!/usr/bin/env bash
# GPU proof in one command: set-up, doctor, the GPU-marked tests, and one timed real-data round on
# msrs-bench (the COCO YOLOX-nano teacher scored on thermal = source_only, and one adapted student),
# all on the GPU; the record goes to benchmarks/results/gpu_check_<UTC date>.md with the card's name.
#
# Why a script: "it works on a GPU" has to be re-provable by anyone with a CUDA machine, from a copy
# of the working tree and the package registry, in a few minutes, with the numbers written down.
#
# Usage: scripts/gpu_check.sh [--dry-run] [--skip-setup] [--shared DIR] [--epochs N] [--out FILE]
#   --dry-run     print the steps (commands) and exit; nothing is run or written
#   --skip-setup  use the existing .venv (default: scripts/setup_env.sh first, which on a CUDA machine
#                 builds mmcv's CUDA ops once: minutes with MAX_JOBS=$(nproc); not in the 8-minute budget)
#   --shared DIR  the folder holding data/msrs-bench and models/yolox-nano-coco (default ../shared,
#                 else ./shared)
#   --epochs N    the student's epochs in the timed round (default 10; msrs-bench: 22 iterations each)
#   --out FILE    the record (default benchmarks/results/gpu_check_<UTC date>.md)
# Budget: everything after the set-up in <= 8 minutes on one H100-class GPU (each step is timed).
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."

DRY=0 SETUP=1 SHARED="" EPOCHS=10 OUT=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --skip-setup) SETUP=0 ;;
    --shared) SHARED=$2; shift ;;
    --epochs) EPOCHS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $SHARED ]]; then
  SHARED=../shared
  [[ -d $SHARED/data/msrs-bench || ! -d shared/data/msrs-bench ]] || SHARED=shared
fi
SHARED=$(realpath -m "$SHARED")
OUT=${OUT:-benchmarks/results/gpu_check_$(date -u +%Y-%m-%d).md}
PY=.venv/bin/python
WS=${GPU_CHECK_WORKSPACE:-.cache/gpu_check/ws}
PARAMS=$SHARED/models/yolox-nano-coco/params.msrs-bench.yaml
# the teacher on thermal (source_only) + one student, everything on cuda; the student is short
ROUND_SETS=(--set infer.device=cuda --set student.train.device=cuda --set "student.train.epochs=$EPOCHS"
            --set student.train.num_workers=4 --set self_training.rounds=1 --set "eval.baselines=[source_only]")

STEPS=(
  "setup|MAX_JOBS=\$(nproc) scripts/setup_env.sh"
  "doctor|$PY -m rgb2thermal_cli.main doctor"
  "gpu tests|CUDA_VISIBLE_DEVICES=\${CUDA_VISIBLE_DEVICES:-0} $PY -m pytest -m gpu tests -q -rs -p no:cacheprovider"
  "round|rm -rf $WS && $PY -m rgb2thermal_cli.main run --params $(printf '%q' "$PARAMS") --workspace $WS $(printf '%q ' "${ROUND_SETS[@]}")"
  "record|$PY -m rgb2thermal_cli.main runs --workspace $WS show"
)

if [[ $DRY == 1 ]]; then
  echo "gpu_check (dry run): steps, in order; record -> $OUT"
  for s in "${STEPS[@]}"; do
    name=${s%%|*}
    [[ $name == setup && $SETUP == 0 ]] && continue
    printf '  %-10s %s\n' "$name" "${s#*|}"
  done
  exit 0
fi

[[ -f $PARAMS ]] || { echo "gpu_check: $PARAMS not found (give --shared DIR)" >&2; exit 2; }
command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi: not a CUDA machine" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")" .cache/gpu_check
LOG=.cache/gpu_check/log.txt
: > "$LOG"
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
declare -A SECS RC
total=0
for s in "${STEPS[@]}"; do
  name=${s%%|*} cmd=${s#*|}
  [[ $name == setup && $SETUP == 0 ]] && continue
  echo "== $name: $cmd" | tee -a "$LOG"
  t0=$(date +%s%N)
  set +e
  bash -c "$cmd" 2>&1 | tee -a "$LOG" | tail -n 40
  RC[$name]=${PIPESTATUS[0]}
  set -e
  SECS[$name]=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  [[ $name == setup ]] || total=$(awk -v a="$total" -v b="${SECS[$name]}" 'BEGIN { printf "%.1f", a + b }')
  echo "== $name: exit ${RC[$name]} in ${SECS[$name]} s" | tee -a "$LOG"
done

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Card: **$card** (nvidia-smi: name, memory.total, driver). Commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo "Timed round: msrs-bench (170 adapt / 83 test pairs), COCO YOLOX-nano teacher, one student of $EPOCHS epochs at 416 px,"
  echo "eval baselines source_only (the teacher on thermal); \`$PARAMS\` with \`${ROUND_SETS[*]}\`."
  echo
  echo "| step | seconds | exit |"
  echo "|---|---|---|"
  for s in "${STEPS[@]}"; do
    name=${s%%|*}
    [[ -n ${SECS[$name]:-} ]] && echo "| $name | ${SECS[$name]} | ${RC[$name]} |"
  done
  echo "| **all but set-up** (budget 480 s) | $total | |"
  echo
  echo '## Output (doctor, GPU tests, the run record with per-stage seconds)'
  echo
  echo '```'
  grep -v '^\s*$' "$LOG" | tail -n 200
  echo '```'
} > "$OUT"
echo "gpu_check: record written to $OUT (all but set-up: $total s)"
bad=0
for name in "${!RC[@]}"; do [[ ${RC[$name]} == 0 ]] || bad=1; done
exit $bad
