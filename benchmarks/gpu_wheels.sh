#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh installs on a GPU machine that has no package registry: the
# versions CI tests (constraints.txt) of the packages its image lacks or holds at another version
# (bitsandbytes, transformers, peft, soundfile, the answer checker's three). About 57 MB in .whl/,
# which git ignores; the device tool carries it (carry: [".whl"]).
#   bash benchmarks/gpu_wheels.sh            (here, where PyPI is reachable)
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" constraints.txt | head -n 1; }
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  "$(pin bitsandbytes)" "$(pin transformers)" "$(pin peft)" "$(pin soundfile)" "$(pin math-verify)" \
  "$(pin latex2sympy2_extended)" "$(pin antlr4-python3-runtime)"
ls -l .whl
