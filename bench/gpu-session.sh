#!/usr/bin/env bash
# One visit to a lent GPU machine (the `device` tool: 15 minutes of device time, 10 per command, nothing
# fetched there, at most 8 files back from $OUT) in as few commands as possible:
#
#   here, once:   bash bench/gpu-session.sh prepare
#                 (scipy-openblas32 for the device's Python 3.12 into .whl/, GoogleTest's source into .gtest/,
#                  MNIST and Fashion-MNIST into .data/: all ignored by git; carry them)
#   device call 1 (carry [".whl", ".gtest", ".data"], timeout_s 600): bash bench/gpu-session.sh build test bench
#   device call 2 (same carry, at once: the build stays while the machine is warm):
#                 bash bench/gpu-session.sh experiments
#   then give the machine back. The stage limits (below) add up to 9 minutes for call 1 and 7 for call 2.
#
# Each stage runs under its own time limit and the next one runs whatever happened; everything lands in
# $OUT/results.tgz (logs, bench/results/*-cuda-*, docs/results/gpu/) and $OUT/summary.txt, rewritten after
# every stage so that a command stopped at its limit still brings back what was done.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=/tmp/ekinet-gpu
BUILD=$ROOT/build/gpu

prepare() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl scipy-openblas32
  rm -rf .gtest && cp -r /usr/src/googletest .gtest
  mkdir -p .data && cp -r ../shared/data/mnist ../shared/data/fashion_mnist .data/
  du -sh .whl .gtest .data
}

# stage NAME SECONDS FUNCTION: run the function in a fresh copy of this script under a time limit, log to
# $WORK/logs/NAME.log, record its exit status and time, and pack what there is into $OUT.
stage() {
  local name=$1 limit=$2 function=$3 start rc
  start=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" bash "$0" --run "$function" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc, $(($(date +%s) - start)) s" | tee -a "$WORK/summary.txt"
  tail -n 5 "$WORK/logs/$name.log"
  collect
  return $rc
}

collect() {
  cp "$WORK/summary.txt" "$OUT/summary.txt"
  tar -czf "$OUT/results.tgz" -C "$WORK" logs results 2>/dev/null
}

setup_environment() {
  [ -d /tmp/site/scipy_openblas32 ] ||
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=$ROOT/python:/tmp/site EKINET_DATA=$ROOT/.data PYTHONUNBUFFERED=1
  python3 -c "import scipy_openblas32, numpy, cupy, torch; print(numpy.__version__, cupy.__version__, torch.__version__)"
}

build() {
  if [ ! -f /tmp/gtest/lib/cmake/GTest/GTestConfig.cmake ]; then
    cmake -S .gtest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
      -DCMAKE_INSTALL_PREFIX=/tmp/gtest && cmake --build /tmp/gtest-build && cmake --install /tmp/gtest-build || return 1
  fi
  # One build for the C++ tests and the Python extension (imported from python/ through PYTHONPATH), so
  # the CUDA sources compile once.
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEKINET_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DEKINET_BLAS=SCIPY_OPENBLAS -DEKINET_BUILD_TESTS=ON -DEKINET_BUILD_PYTHON=ON -DGTest_ROOT=/tmp/gtest \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython3_EXECUTABLE="$(command -v python3)" &&
    cmake --build "$BUILD" --parallel 16 &&
    cp "$BUILD"/python/_core*.so python/ekinet/ &&
    python3 -c "import ekinet, json; print(json.dumps(ekinet.build_info()))"
}

# The C++ suite (CPU and CUDA cases) and the Python CUDA tests; the CPU-only Python suite is CI's.
run_tests() {
  ctest --test-dir "$BUILD" --output-on-failure --parallel 8
  local cpp=$?
  python3 -m pytest tests/test_cuda.py -p no:cacheprovider -q -n 8 -rs
  local py=$?
  return $((cpp || py))
}

benchmarks() {
  mkdir -p "$WORK/results/bench"
  local rc=0
  python3 bench/randomize.py --device cuda --out "$WORK/results/bench" || rc=1
  python3 bench/forward.py --device cuda --budget 10 --out "$WORK/results/bench" || rc=1
  python3 bench/update.py --device cuda --out "$WORK/results/bench" || rc=1
  python3 bench/train_step.py --device cuda --out "$WORK/results/bench" || rc=1
  return $rc
}

# The paper's settings for the targets of the training issue that fit one command: DNN 2 EKI(R) (J = 2000,
# 10 epochs; with the step schedule that did best on the CPU, h = 12 decaying by 0.75 an epoch) and the
# Heaviside/ReLU networks on Fashion-MNIST.
experiments() {
  mkdir -p "$WORK/results/experiments"
  local rc=0
  python3 -m ekinet experiment mnist-dnn2 --size paper --device cuda --methods eki-r --step 12 --step-decay 0.75 \
    --no-progress --out "$WORK/results/experiments" || rc=1
  collect
  python3 -m ekinet experiment fashion-heaviside --size paper --device cuda --no-progress \
    --out "$WORK/results/experiments" || rc=1
  return $rc
}

case ${1:-} in
  prepare)
    prepare
    exit ;;
  --run)
    setup_environment >/dev/null
    "$2"
    exit ;;
esac
: "${OUT:?run this on the device machine, where \$OUT is set (or set OUT to a folder)}"
mkdir -p "$WORK/logs" "$WORK/results"
nvidia-smi >"$WORK/logs/nvidia-smi.log" 2>&1
stage environment 60 setup_environment || exit 1
for name in "$@"; do
  case $name in
    build) stage build 240 build ;;
    test) stage test 150 run_tests ;;
    bench) stage bench 240 benchmarks ;;
    experiments) stage experiments 420 experiments ;;
    *) echo "unknown stage $name (prepare, build, test, bench, experiments)"; exit 2 ;;
  esac
done
