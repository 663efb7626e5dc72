#!/usr/bin/env bash
# Create ./venv with the newest working Python of 3.12 / 3.11 / 3.10 and install requirements.txt.
# Safe to run again: when requirements.txt has not changed since the last successful install and the
# venv still imports its packages, it does nothing.
set -euo pipefail
cd "$(dirname "$0")"

pick_python() {
  local py
  for py in python3.12 python3.11 python3.10 python3; do
    # Run the candidate: pyenv shims exist but fail for versions that are not installed.
    if "$py" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' >/dev/null 2>&1; then
      echo "$py"; return 0
    fi
  done
  return 1
}

stamp=venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -x venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && venv/bin/python -c 'import torch, torchaudio, torchcrepe, librosa, soundfile, wandb' >/dev/null 2>&1; then
  echo "venv is up to date ($(venv/bin/python --version)); nothing to do."
  exit 0
fi

if ! PY=$(pick_python); then
  echo "setup_env.sh: no usable Python 3.10-3.12 found (tried python3.12, python3.11, python3.10, python3); install one and run again." >&2
  exit 1
fi
if [ ! -x venv/bin/python ] || ! venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  echo "Creating ./venv with $PY ($("$PY" --version 2>&1))"
  rm -rf venv
  "$PY" -m venv venv
fi
venv/bin/python -m pip install --quiet --upgrade pip
echo "Installing requirements.txt (first time: ~2 min, ~7.5 GB; torch wheels carry CUDA libraries and also run on CPU)"
venv/bin/python -m pip install --quiet -r requirements.txt
echo "$want" > "$stamp"
echo "Done. Next: ./venv/bin/python verify_project.py"
