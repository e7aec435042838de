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
# (this script's build lines), Python version, machine and CUDA-or-not (for CUDA also torch's CUDA
# version, the GPU arch and the CUDA-RECIPE block: the CPU key is unchanged by it). A second clone on
# the same machine skips the build. Under CI (CI=true, which CI sets) or with
# RGB2THERMAL_NO_WHEEL_CACHE=1 the cache is off: mmcv is built from the sdist into the clone's own
# .cache/wheels, so every CI run proves the build step.
#
# On a machine where torch sees a GPU, mmcv's ops are built with CUDA (FORCE_CUDA=1): the compiler
# comes from the package registry (cuda-toolkit[nvcc,cccl] at the version torch pins) when no nvcc
# is installed; MAX_JOBS=$(nproc) shortens that build. If it fails, the stated fallback is a
# CPU-ops build with a loud warning (detectors then run with device: cpu; see the CUDA-RECIPE block).
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
wheel_dir() {  # $1: "cpu", or the CUDA part of the key (toolkit version, GPU arch, CUDA-RECIPE text)
  local key
  key=$(printf '%s|%s|%s|%s|%s|%s' "$MMCV_VERSION" "$TORCH_VERSION" "$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')" \
    "$(uname -m)" "$1" "$recipe" | sha256sum | cut -c1-16)
  if [[ "${RGB2THERMAL_NO_WHEEL_CACHE:-0}" == 1 || "${CI:-}" == true ]]; then
    echo ".cache/wheels/$key"
  else
    echo "${RGB2THERMAL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rgb2thermal/wheels}/$key"
  fi
}

# CUDA-RECIPE-BEGIN
# On a CUDA machine mmcv's ops are compiled for the GPU too (FORCE_CUDA=1), or detectors stop at NMS on
# a CUDA tensor. torch 2.14.1 (+cu130) brings the CUDA runtime and library headers as wheels
# (cuda-toolkit[cudart,cublas,...]==13.0.3, all in site-packages/nvidia/cu13); the compiler is the same
# metapackage's nvcc and cccl (thrust/cub) extras, at the version torch pins, so no system CUDA toolkit
# is needed. A system nvcc on PATH (or CUDA_HOME) is used as it is.
cuda_toolchain() {
  if [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]] || command -v nvcc >/dev/null 2>&1; then
    export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
    say "CUDA compiler: $CUDA_HOME/bin/nvcc (already installed)"
    return 0
  fi
  local tk
  tk=$("$VENV/bin/python" -c 'import importlib.metadata as m, re
print(next((re.search(r"==\s*([\d.]+)", r).group(1) for r in m.requires("torch") or [] if r.startswith("cuda-toolkit")), ""))')
  if [[ -z $tk ]]; then
    say "no cuda-toolkit requirement in torch's metadata: install a CUDA toolkit matching torch.version.cuda and re-run"
    return 1
  fi
  say "CUDA compiler: cuda-toolkit[nvcc,cccl]==$tk from the package registry (torch's own CUDA version)"
  "${PIP[@]}" install -q "cuda-toolkit[nvcc,cccl]==$tk" || return 1
  CUDA_HOME=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu${tk%%.*}
  export CUDA_HOME
  # the wheels ship libcudart.so.N only; the linker's -lcudart needs the unversioned name
  mkdir -p .cache/cuda-link && ln -sf "$CUDA_HOME/lib/libcudart.so.${tk%%.*}" .cache/cuda-link/libcudart.so
  export LIBRARY_PATH=$PWD/.cache/cuda-link${LIBRARY_PATH:+:$LIBRARY_PATH}
  [[ -x "$CUDA_HOME/bin/nvcc" ]] || { say "nvcc not found under $CUDA_HOME"; return 1; }
}
# CUDA-RECIPE-END

if [[ $cuda == cuda ]]; then
  arch=${TORCH_CUDA_ARCH_LIST:-$("$VENV/bin/python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null || echo 9.0)}
  cuda_key="cuda|$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda)' 2>/dev/null)|$arch|$(sed -n '/^# CUDA-RECIPE-BEGIN/,/^# CUDA-RECIPE-END/p' "$0")"
  WHEELS=$(wheel_dir "$cuda_key")
else
  WHEELS=$(wheel_dir cpu)
fi
if [[ "${RGB2THERMAL_NO_WHEEL_CACHE:-0}" == 1 || "${CI:-}" == true ]]; then
  say "wheel cache off (CI=${CI:-} RGB2THERMAL_NO_WHEEL_CACHE=${RGB2THERMAL_NO_WHEEL_CACHE:-0}): mmcv is built from its sdist into $WHEELS"
fi
mkdir -p "$WHEELS"
build_mmcv() {  # the recipe runs in a function so that a failed CUDA build can fall back (below)
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
}
if [[ $cuda == cuda ]]; then
  set +e
  ( set -e
    cuda_toolchain
    export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch
    build_mmcv )
  rc=$?
  set -e
  if [[ $rc != 0 ]]; then
    # Stated fallback: mmcv with CPU ops only. torch and the models still use the GPU, but mmcv's NMS
    # (which mmdet's YOLOX head calls) has no CUDA kernel then: `rgb2thermal doctor` FAILs its device
    # check, and infer/train must run with device: cpu until the CUDA build succeeds.
    say "WARNING: ****************************************************************************"
    say "WARNING: mmcv's CUDA ops did NOT build (exit $rc): falling back to CPU-only ops."
    say "WARNING: NMS runs on the CPU only: detectors on device cuda will fail; use device: cpu,"
    say "WARNING: or install a CUDA toolkit (nvcc on PATH or CUDA_HOME) and re-run this script."
    say "WARNING: ****************************************************************************"
    cuda=cpu-fallback
    WHEELS=$(wheel_dir cpu)
    mkdir -p "$WHEELS"
    # mmcv's setup.py compiles CUDA ops whenever torch sees a GPU: hide it for this build
    ( unset FORCE_CUDA CUDA_HOME; export CUDA_VISIBLE_DEVICES=""; build_mmcv )
  fi
else
  build_mmcv
fi

say "step 3/3: rgb2thermal and the rest of the stack (sam2 without CUDA extension, no build isolation)"
SAM2_BUILD_CUDA=${SAM2_BUILD_CUDA:-0} "${PIP[@]}" install -q --no-build-isolation --find-links "$WHEELS" \
  "${CONSTRAINTS[@]}" -e ".[dev]"

"$VENV/bin/python" -c "from mmcv.ops import nms, batched_nms, RoIAlign; import mmdet, sam2, prefect, dvc, kornia, pycocotools, cv2, optuna"
if [[ $cuda == cuda ]]; then
  # a venv that had the CPU-ops wheel keeps it (same version): put the CUDA one in its place
  "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEELS"/mmcv-$MMCV_VERSION-*.whl
  "$VENV/bin/python" -c "import torch; from mmcv.ops import nms; b = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10]], device='cuda')
print('[setup] mmcv nms on', b.device, '->', nms(b, torch.tensor([0.9, 0.8], device='cuda'), 0.5)[1].tolist())"
fi
if [[ $cuda == cpu-fallback ]]; then
  say "no stamp written: the next run tries the CUDA build again"
else
  echo "$want" > "$STAMP"
fi
say "done in $(( $(date +%s) - start )) s"
