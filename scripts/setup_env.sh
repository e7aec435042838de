#!/usr/bin/env bash
# Builds .venv with the whole rgb2thermal stack, idempotently.
#
# Why a script and not `pip install -e .` alone: mmcv 2.1.0 ships only as an sdist whose
# setup.py hard-codes '-std=c++17', while torch 2.14's headers require C++20. It must be
# patched and compiled against the already-installed torch, so the install has two steps
# and a one-time wheel build (pip does not cache wheels built from a local sdist path, so
# without our own wheelhouse every install would recompile: ~17 min on a fresh 2-core box).
#
# The built wheel lives in a per-user cache OUTSIDE the clone, the way pip keeps its own:
#   ${RGB2THERMAL_WHEEL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/rgb2thermal/wheels}/<key>/
# <key> hashes everything that changes the binary: mmcv version, torch version, the patch
# (this script's build lines), Python version, machine and CUDA-or-not. A second clone on
# the same machine skips the build. Under CI (CI=true, which CI sets) or with
# RGB2THERMAL_NO_WHEEL_CACHE=1 the cache is off: mmcv is built from the sdist into the clone's own
# .cache/wheels, so every CI run proves the build step.
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."

PY=${PYTHON:-python3.11}
VENV=.venv
BUILD=.cache/build
LOCK=requirements/lock.txt
STAMP=$VENV/.rgb2thermal-setup
MMCV_VERSION=2.1.0
TORCH_VERSION=2.14.1

say() { printf '[setup] %s\n' "$*"; }

want=$( { cat pyproject.toml scripts/setup_env.sh; cat "$LOCK" 2>/dev/null || true; } | sha256sum | cut -c1-16)
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" && -x $VENV/bin/rgb2thermal ]]; then
  say "environment up to date ($VENV, stamp $want)"
  exit 0
fi

start=$(date +%s)
if [[ ! -x $VENV/bin/python ]]; then
  say "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CONSTRAINTS=()
[[ -f $LOCK ]] && CONSTRAINTS=(-c "$LOCK")

say "step 1/3: torch, torchvision and build tools (setuptools<81: mmcv's setup imports pkg_resources)"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" torch==$TORCH_VERSION torchvision==0.29.1 \
  "setuptools>=77.0.3,<81" wheel ninja

cuda=$("$VENV/bin/python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo cpu)
# The build recipe is the block between the two BUILD-RECIPE markers below: its text is part of the key.
recipe=$(sed -n '/^# BUILD-RECIPE-BEGIN/,/^# BUILD-RECIPE-END/p' "$0")
key=$(printf '%s|%s|%s|%s|%s|%s' "$MMCV_VERSION" "$TORCH_VERSION" "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')" \
  "$(uname -m)" "$cuda" "$recipe" | sha256sum | cut -c1-16)
if [[ "${RGB2THERMAL_NO_WHEEL_CACHE:-0}" == 1 || "${CI:-}" == true ]]; then
  WHEELS=.cache/wheels/$key
  say "wheel cache off (CI=${CI:-} RGB2THERMAL_NO_WHEEL_CACHE=${RGB2THERMAL_NO_WHEEL_CACHE:-0}): mmcv is built from its sdist into $WHEELS"
else
  WHEELS=${RGB2THERMAL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rgb2thermal/wheels}/$key
fi
mkdir -p "$WHEELS"
# BUILD-RECIPE-BEGIN
if ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl >/dev/null 2>&1; then
  say "step 2/3: mmcv $MMCV_VERSION wheel found in $WHEELS (no rebuild)"
else
  say "step 2/3: building mmcv $MMCV_VERSION with ops from its sdist into $WHEELS (one time per machine, ~17 min on 2 cores)"
  rm -rf "$BUILD" && mkdir -p "$BUILD"
  "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$BUILD" mmcv==$MMCV_VERSION
  tar xzf "$BUILD"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD"
  say "patch: mmcv-$MMCV_VERSION/setup.py '-std=c++17' -> '-std=c++20' (torch>=2.10 headers #error below C++20;"
  say "       the flag is appended after CFLAGS/CXXFLAGS, so no environment variable can override it)"
  sed -i "s/'-std=c++17'/'-std=c++20'/g" "$BUILD"/mmcv-$MMCV_VERSION/setup.py
  grep -c "c++20" "$BUILD"/mmcv-$MMCV_VERSION/setup.py | sed 's/^/[setup]        occurrences patched: /'
  # Built into a temp folder and moved in whole: a killed build never leaves a half wheel
  # in the shared cache that a later clone would take for a good one.
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
    -w "$BUILD/out" "$BUILD"/mmcv-$MMCV_VERSION
  whl=$(ls "$BUILD"/out/mmcv-$MMCV_VERSION-*.whl)
  mv "$whl" "$WHEELS/.$(basename "$whl").tmp" && mv "$WHEELS/.$(basename "$whl").tmp" "$WHEELS/$(basename "$whl")"
  rm -rf "$BUILD"
fi
# BUILD-RECIPE-END

say "step 3/3: rgb2thermal and the rest of the stack (sam2 without CUDA extension, no build isolation)"
SAM2_BUILD_CUDA=${SAM2_BUILD_CUDA:-0} "${PIP[@]}" install -q --no-build-isolation --find-links "$WHEELS" \
  "${CONSTRAINTS[@]}" -e ".[dev]"

"$VENV/bin/python" -c "from mmcv.ops import nms, batched_nms, RoIAlign; import mmdet, sam2, prefect, dvc, kornia, pycocotools, cv2, optuna"
echo "$want" > "$STAMP"
say "done in $(( $(date +%s) - start )) s"
