#!/usr/bin/env bash
# One-step set-up on a fresh Debian machine (Python 3.11, root): the Fashion-MNIST package,
# a virtual environment in .venv, and dwrprune with its test tools.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    # System site-packages: a machine that already carries torch 2.14.1 reuses it instead of
    # copying another 5 GB; pip still installs whatever the pins below do not find there.
    python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
.venv/bin/dwrprune --version
