#!/usr/bin/env bash
# One visit to a lent GPU machine (the `device` tool: 15 minutes of device time, 10 per command, nothing
# fetched there, at most 8 files back from $OUT) in as few commands as possible:
#
#   here, once:   bash bench/gpu-session.sh prepare
#                 (scipy-openblas32 for the device's Python 3.12 into .whl/, GoogleTest's source into .gtest/,
#                  MNIST into .data/: all ignored by git; carry them)
#   here, before every device call: bash bench/gpu-session.sh stamp (the commit the results will name)
#   device call (carry [".whl", ".gtest", ".data"], timeout_s 600): bash bench/gpu-session.sh all
#   (or name the stages: `build test experiments` once the benchmarks are committed; at once after a call
#   that stopped at its deadline, `experiments` alone resumes them from their checkpoints), then give the
#   machine back. Stages run in the order named (`all`: build forward test train_step update
#   randomize experiments) under one deadline (EKINET_GPU_SECONDS, 560 by default): each stage gets its own
#   limit or what is left before the deadline, whichever is less, so the call ends inside its limit.
#
# Each stage runs under its time limit and the next one runs whatever happened; everything lands in
# $OUT/results.tgz (logs, bench/results/*-cuda-*, docs/results/gpu/) and $OUT/summary.txt, rewritten after
# every stage so that a command stopped at its limit still brings back what was done.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
WORK=/tmp/ekinet-gpu
BUILD=$ROOT/build/gpu

prepare() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl scipy-openblas32
  rm -rf .gtest && cp -r /usr/src/googletest .gtest
  mkdir -p .data && cp -r ../shared/data/mnist .data/
  stamp
  du -sh .whl .gtest .data
}

# The copy on the device has no .git: the commit its results name travels in .data/commit.
stamp() {
  mkdir -p .data && git describe --always --dirty >.data/commit && cat .data/commit
}

# stage NAME SECONDS FUNCTION: run the function in a fresh copy of this script under a time limit (SECONDS or
# what is left before the deadline), log to $WORK/logs/NAME.log, record its exit status and time, and pack what
# there is into $OUT.
stage() {
  local name=$1 limit=$2 function=$3 start rc left
  start=$(date +%s)
  left=$((DEADLINE - start))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "$name: not run, ${left}s left before the deadline" | tee -a "$WORK/summary.txt"
    collect
    return 1
  fi
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" bash "$0" --run "$function" >"$WORK/logs/$name.log" 2>&1
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
  [ -f .data/commit ] && EKINET_GIT_COMMIT=$(cat .data/commit) && export EKINET_GIT_COMMIT
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

# The benchmarks, each its own stage; timings spend at least EKINET_BENCH_MIN_SECONDS (GPU operations take
# milliseconds, so 0.2 s gives many runs to take the best of).
bench_forward() { python3 bench/forward.py --device cuda --budget 10 --out "$WORK/results/bench"; }
bench_train_step() { python3 bench/train_step.py --device cuda --out "$WORK/results/bench"; }
bench_update() { python3 bench/update.py --device cuda --out "$WORK/results/bench"; }
bench_randomize() { python3 bench/randomize.py --device cuda --out "$WORK/results/bench"; }

# The paper's settings for the experiments the CPU cannot run in a session. First DNN 4 EKI(R) with input- and
# hidden-span draws, never run at the paper's size (about 3.5 hours on 2 CPU cores). Then DNN 3 with them at a
# fifth seed (seeds 0-3 ran on the CPU). Then CNN-MNIST EKI(R) with the Kalman update, about 10 minutes on an H200
# (9.8 updates a second). The CPU ran three of its epochs (step decay 0.85 and 0.4): an epoch ahead of the loss scheme
# after the first, behind or level after the third (docs/results.md, "The Kalman update"). Checkpoints go to
# $WORK/checkpoints after every epoch: a stage stopped at its limit resumes there in the next call while the
# machine is warm.
experiments() {
  mkdir -p "$WORK/results/experiments"
  local rc=0 spans="--methods eki-r --step 12 --step-decay 0.85 --input-span --hidden-span --centred-draws"
  # shellcheck disable=SC2086  # $spans is a list of options
  python3 -m ekinet experiment mnist-dnn4 --size paper --device cuda $spans --no-progress \
    --checkpoints "$WORK/checkpoints" --out "$WORK/results/experiments" || rc=1
  collect
  # shellcheck disable=SC2086
  python3 -m ekinet experiment mnist-dnn3 --size paper --device cuda $spans --seed 4 --no-progress \
    --checkpoints "$WORK/checkpoints" --out "$WORK/results/experiments" || rc=1
  collect
  python3 -m ekinet experiment cnn-mnist --size paper --device cuda --methods eki-r --update kalman --noise 0.003 \
    --step 1 --step-decay 0.85 --centred-draws --no-progress \
    --checkpoints "$WORK/checkpoints" --out "$WORK/results/experiments" || rc=1
  return $rc
}

case ${1:-} in
  prepare)
    prepare
    exit ;;
  stamp)
    stamp
    exit ;;
  --run)
    setup_environment >/dev/null
    mkdir -p "$WORK/results/bench"
    "$2"
    exit ;;
esac
: "${OUT:?run this on the device machine, where \$OUT is set (or set OUT to a folder)}"
DEADLINE=$(($(date +%s) + ${EKINET_GPU_SECONDS:-560}))
export EKINET_BENCH_MIN_SECONDS=${EKINET_BENCH_MIN_SECONDS:-0.2}
mkdir -p "$WORK/logs" "$WORK/results"
nvidia-smi >"$WORK/logs/nvidia-smi.log" 2>&1
stage environment 60 setup_environment || exit 1
# The forward benchmark before the tests: its rows hold the issue's GPU targets, and the tests' time varies.
[ "${1:-}" = all ] && set -- build forward test train_step update randomize experiments
for name in "$@"; do
  case $name in
    build) stage build 240 build || break ;;  # nothing after it can run without the build
    test) stage test 150 run_tests ;;
    forward) stage forward 200 bench_forward ;;  # 113 s at ddfe4c1, before the layered timings were added
    train_step) stage train_step 60 bench_train_step ;;
    update) stage update 90 bench_update ;;
    randomize) stage randomize 40 bench_randomize ;;
    experiments) stage experiments 600 experiments ;;
    *) echo "unknown stage $name (prepare, all, build, test, forward, train_step, update, randomize," \
         "experiments)"; exit 2 ;;
  esac
done
