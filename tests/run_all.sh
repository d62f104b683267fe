#!/usr/bin/env bash
# Installs ekinet with its test extras and runs every test: the C++ GoogleTest suite and the out-of-tree
# embedding example (ctest), then the Python suite (pytest). CUDA tests run where a GPU is present.
# Usage: bash tests/run_all.sh   (from the repository root, inside the Python environment to use)
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install ".[test]"

cmake -S . -B build/tests -G Ninja -DCMAKE_BUILD_TYPE=Release -DEKINET_BUILD_TESTS=ON -DEKINET_BLAS=SCIPY_OPENBLAS \
  -DPython3_EXECUTABLE="$(command -v python)"
cmake --build build/tests --parallel
ctest --test-dir build/tests --output-on-failure --parallel 2

# From a neutral directory so the installed package, not the source tree, is imported.
(cd build && python -m pytest ../tests -p no:cacheprovider -q)
