#!/usr/bin/env bash
# Builds .venv with the whole rgb2thermal stack, idempotently.
#
# Why a script and not `pip install -e .` alone: mmcv 2.1.0 ships only as an sdist whose
# setup.py hard-codes '-std=c++17', while torch 2.14's headers require C++20. It must be
# patched and compiled against the already-installed torch, so the install has two steps
# and a one-time wheel build cached in .cache/wheels (pip does not cache wheels built from
# a local sdist path, so without our own wheelhouse every install would recompile ~6 min).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv
WHEELS=.cache/wheels
BUILD=.cache/build
LOCK=requirements/lock.txt
STAMP=$VENV/.rgb2thermal-setup
MMCV_VERSION=2.1.0

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
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" torch==2.14.1 torchvision==0.29.1 \
  "setuptools>=77.0.3,<81" wheel ninja

mkdir -p "$WHEELS"
if ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl >/dev/null 2>&1; then
  say "step 2/3: mmcv $MMCV_VERSION wheel found in $WHEELS (no rebuild)"
else
  say "step 2/3: building mmcv $MMCV_VERSION with ops from its sdist (one time, ~6-7 min on 2 cores)"
  rm -rf "$BUILD" && mkdir -p "$BUILD"
  "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$BUILD" mmcv==$MMCV_VERSION
  tar xzf "$BUILD"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD"
  say "patch: mmcv-$MMCV_VERSION/setup.py '-std=c++17' -> '-std=c++20' (torch>=2.10 headers #error below C++20;"
  say "       the flag is appended after CFLAGS/CXXFLAGS, so no environment variable can override it)"
  sed -i "s/'-std=c++17'/'-std=c++20'/g" "$BUILD"/mmcv-$MMCV_VERSION/setup.py
  grep -c "c++20" "$BUILD"/mmcv-$MMCV_VERSION/setup.py | sed 's/^/[setup]        occurrences patched: /'
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
    -w "$WHEELS" "$BUILD"/mmcv-$MMCV_VERSION
  rm -rf "$BUILD"
fi

say "step 3/3: rgb2thermal and the rest of the stack (sam2 without CUDA extension, no build isolation)"
SAM2_BUILD_CUDA=${SAM2_BUILD_CUDA:-0} "${PIP[@]}" install -q --no-build-isolation --find-links "$WHEELS" \
  "${CONSTRAINTS[@]}" -e ".[dev]"

"$VENV/bin/python" -c "from mmcv.ops import nms, batched_nms, RoIAlign; import mmdet, sam2, prefect, dvc, kornia, pycocotools, cv2, optuna"
echo "$want" > "$STAMP"
say "done in $(( $(date +%s) - start )) s"
