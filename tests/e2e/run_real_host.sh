#!/usr/bin/env bash
# The real-host tests: a real ComfyUI 0.3.64 (tests/e2e) and its frontend in Chromium, nothing skipped.
#
#   bash tests/e2e/run_real_host.sh [pytest args]
#
# Sets up what it needs outside the repository, in $SANA_HOST_DIR (default ~/.cache/sanasprint-host),
# reusing it when it is already there:
#   ComfyUI/     a copy of ComfyUI's source tree ($COMFYUI_SRC, default ../shared/hosts/ComfyUI; the
#                source is never written to);
#   comfy-venv/  its Python environment: torch 2.14.1 + torchvision 0.29.1 (the pair that imports on a
#                CPU-only machine), ComfyUI's requirements, this pack's requirements, pytest;
#   pw/          playwright-core from npm (it drives Debian's Chromium; no browser download);
# and Debian's chromium (apt-get) when /usr/bin/chromium is missing. Then runs
# `pytest tests/e2e` with that Python; SANA_E2E_REQUIRED=1 turns any skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
HOST=${SANA_HOST_DIR:-$HOME/.cache/sanasprint-host}
SRC=${COMFYUI_SRC:-$REPO/../shared/hosts/ComfyUI}
PY=${PYTHON:-python3}
mkdir -p "$HOST"
start=$(date +%s)

if [ ! -f "$HOST/ComfyUI/main.py" ]; then
  [ -f "$SRC/main.py" ] || { echo "no ComfyUI source tree at $SRC (set COMFYUI_SRC)" >&2; exit 2; }
  echo "+ copy $SRC -> $HOST/ComfyUI"
  rm -rf "$HOST/ComfyUI.partial"
  cp -r "$SRC" "$HOST/ComfyUI.partial"
  chmod -R u+w "$HOST/ComfyUI.partial"
  mv "$HOST/ComfyUI.partial" "$HOST/ComfyUI"
fi

# One line of packages; the environment is rebuilt when it changes (a stamp file keeps the last one).
PACKAGES="torch==2.14.1 torchvision==0.29.1 -r $HOST/ComfyUI/requirements.txt -r $REPO/requirements.txt requests pytest websocket-client"
if [ "$(cat "$HOST/comfy-venv/.sana-packages" 2>/dev/null)" != "$PACKAGES" ]; then
  echo "+ $PY -m venv $HOST/comfy-venv && pip install $PACKAGES"
  rm -rf "$HOST/comfy-venv"
  "$PY" -m venv "$HOST/comfy-venv"
  # shellcheck disable=SC2086  # PACKAGES is a list of arguments
  "$HOST/comfy-venv/bin/pip" install -q $PACKAGES
  echo "$PACKAGES" > "$HOST/comfy-venv/.sana-packages"
fi

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  echo "+ apt-get install chromium"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
if [ ! -d "$HOST/pw/node_modules/playwright-core" ]; then
  echo "+ npm install --prefix $HOST/pw playwright-core"
  npm install --silent --prefix "$HOST/pw" playwright-core
fi
echo "real-host setup: $(( $(date +%s) - start )) s"

export COMFYUI_DIR="$HOST/ComfyUI" PLAYWRIGHT_CORE_DIR="$HOST/pw" CHROMIUM SANA_BROWSER_E2E=1 SANA_E2E_REQUIRED=1
exec "$HOST/comfy-venv/bin/python" -m pytest tests/e2e -q -p no:cacheprovider "$@"
