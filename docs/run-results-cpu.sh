#!/usr/bin/env bash
# The runs behind docs/results.md on a CPU (no GPU was lent): each experiment at the registry's reduced "cpu" size,
# or smaller where noted, writing docs/results/NAME.json (and NAME.png). Paper-size runs need a GPU:
#   ekinet experiment NAME --size paper --device cuda --out docs/results
# Usage: EKINET_DATA=<data dir> bash docs/run-results-cpu.sh [NAME ...]   (default: all, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/results
run() { python -m ekinet experiment "$@" --size cpu --out "$out" --no-progress; }
all=(quickstart boston gaussian-nll mnist-dnn1 mnist-dnn2 fashion-heaviside cnn-mnist rnn-mnist mnist-dnn3 mnist-dnn4
     ensemble-scaling-mnist ensemble-scaling-fashion-mnist melbourne-rnn sunspots-rnn lstm-batched-online)
for name in "${@:-${all[@]}}"; do
  echo "== $name $(date -u +%H:%M:%S)"
  case "$name" in
    mnist-dnn3) run "$name" --methods eki-r,sgd ;;                      # DNN 3-4: EKI(R) and SGD only (time)
    mnist-dnn4) run "$name" --methods eki-r,sgd --train-size 20000 ;;
    ensemble-scaling-fashion-mnist) run "$name" --ensemble 400 --epochs 5 ;;  # J up to 400, 5 epochs (time)
    *) run "$name" ;;
  esac
done
# Ten epochs at J = 200 (docs/results/epochs10), run separately:
#   python -m ekinet experiment mnist-dnn2 --size cpu --epochs 10 --methods eki-r --out docs/results/epochs10 --no-progress
#   python -m ekinet experiment fashion-heaviside --size cpu --epochs 10 --out docs/results/epochs10 --no-progress
# DNN 2 at the paper's J = 2000 for 2 epochs (docs/results/j2000, 85 minutes):
#   python -m ekinet experiment mnist-dnn2 --size cpu --ensemble 2000 --epochs 2 --methods eki-r --out docs/results/j2000 --no-progress
# Momentum SGD on DNN 3 and DNN 4 (docs/results/momentum-sgd-dnn34):
#   python -m ekinet experiment mnist-dnn3 --size cpu --methods momentum-sgd --out docs/results/momentum-sgd-dnn34 --no-progress
#   python -m ekinet experiment mnist-dnn4 --size cpu --methods momentum-sgd --train-size 20000 --out docs/results/momentum-sgd-dnn34 --no-progress
# Plain EKI on DNN 3 and DNN 4 (docs/results/eki-dnn34):
#   python -m ekinet experiment mnist-dnn3 --size cpu --methods eki --out docs/results/eki-dnn34 --no-progress
#   python -m ekinet experiment mnist-dnn4 --size cpu --methods eki --train-size 20000 --out docs/results/eki-dnn34 --no-progress
# DNN 2 EKI(R) at the paper's settings (J = 2000, 10 epochs) on the CPU, with the mean-only EKI(R) update,
# about 2 hours each: the default step h = 3 (docs/results/paper-cpu), h = 12 (docs/results/paper-cpu-h12) and
# h = 12 decaying by 0.75 an epoch (docs/results/paper-cpu-decay); h = 12 was
# the best of 200 updates at h = 3, 6, 12, 24 (docs/results/step-j2000):
#   python -m ekinet experiment mnist-dnn2 --size paper --methods eki-r --out docs/results/paper-cpu
#   python -m ekinet experiment mnist-dnn2 --size paper --methods eki-r --step 12 --out docs/results/paper-cpu-h12
#   python -m ekinet experiment mnist-dnn2 --size paper --methods eki-r --step 12 --step-decay 0.75 \
#     --out docs/results/paper-cpu-decay
# and h = 12 decaying by 0.85 (docs/results/paper-cpu-decay085; stopped after epoch 4, resumed with the same
# command in a later session, whose code added the epoch-averaged mean):
#   python -m ekinet experiment mnist-dnn2 --size paper --methods eki-r --step 12 --step-decay 0.85 \
#     --checkpoints ckpt --out docs/results/paper-cpu-decay085
#   for h in 3 6 12 24; do python -m ekinet train --model mlp:784-100-10 --data mnist --ensemble 2000 --epochs 1 \
#     --train-size 20000 --validation 0 --step $h --no-progress; done
# The noise of one EKI(R) update's direction (docs/results/gradient-estimate.json, a few minutes):
#   python docs/gradient_estimate.py --ensemble 2000 --out docs/results/gradient-estimate.json
# What accuracy that noise allows (docs/results/gradient-noise.json holds these runs, the seed-0 grid split in two
# halves run side by side; about 20 s a run on one core):
#   python docs/gradient_noise.py --out seed0.json
#   python docs/gradient_noise.py --members 2000,4000,8000 --steps 0.4,0.8 --seed 1 --out seed1.json
#   for seed in 0 1; do python docs/gradient_noise.py --members 2000 --readout-scales 0.25,0.5,2,4 \
#     --steps 0.2,0.4,0.8,1.6,3.2 --seed $seed --out readout$seed.json; done
#   python docs/gradient_noise.py --members 2000 --decay 1 --steps 0.1,0.2,0.4,0.8 --out constant0.json
#   python docs/gradient_noise.py --members 2000 --decay 1 --steps 0.2,0.4 --seed 1 --out constant1.json
# Heaviside 784-100-10 on Fashion-MNIST at J = 2000, 2 epochs (docs/results/heaviside-j2000, 24 minutes):
#   python -c "import numpy as np; from ekinet import datasets; from ekinet.train import Trainer; \
#     train, test = datasets.load_fashion_mnist('train'), datasets.load_fashion_mnist('test'); \
#     t = Trainer('mlp:784-100-10:heaviside', train.subset(np.arange(55000)), test=test, ensemble=2000, epochs=2); \
#     print(t.fit()[-1])"
# Heaviside and ReLU 784-100-10 on Fashion-MNIST at the paper's settings (docs/results/heaviside-paper-cpu; about
# 2 hours each; run over three sessions with the same command, each resuming from the checkpoints; the JSON's
# Heaviside row is the first session's, whose seconds count its whole training):
#   python -m ekinet experiment fashion-heaviside --size paper --methods eki-r --checkpoints ckpt --out out
# Input-span draws (docs/results/paper-cpu-span: DNN 2 in 23 minutes; docs/results/gradient-noise.json: their
# noise emulated, the readout layer's scale halved and quartered too):
#   python -m ekinet experiment mnist-dnn2 --size paper --methods eki-r --step 12 --step-decay 0.85 --input-span \
#     --centred-draws --checkpoints ckpt --out docs/results/paper-cpu-span
#   python docs/gradient_noise.py --members 2000 --steps 0.4,0.8,1.6,3.2 --input-span --out span.json
#   python docs/gradient_noise.py --members 2000 --steps 0.4,0.8,1.6,3.2 --readout-scales 0.25,0.5 --input-span \
#     --out span-readout.json
#   python -m ekinet experiment mnist-dnn2 --size paper --methods eki-r --step 12 --step-decay 0.85 --input-span \
#     --checkpoints ckpt --out docs/results/paper-cpu-span-plain
#   python -m ekinet experiment fashion-heaviside --size paper --step 12 --step-decay 0.85 --input-span \
#     --centred-draws --checkpoints ckpt --out docs/results/heaviside-paper-cpu-span
#   python -m ekinet experiment mnist-dnn2 --size paper --methods eki-r --step 12 --step-decay 0.85 --input-span \
#     --centred-draws --seed 1 --checkpoints ckpt --out docs/results/paper-cpu-span-seed1
#   python -m ekinet experiment mnist-dnn3 --size paper --methods eki-r --step 12 --step-decay 0.85 --input-span \
#     --centred-draws --out docs/results/paper-cpu-span-dnn3
#   python -m ekinet experiment mnist-dnn1 --size paper --methods eki-r --step 12 --step-decay 0.85 --input-span \
#     --centred-draws --out docs/results/paper-cpu-span-dnn1
# On a GPU (docs/results/gpu: DNN 2 with seeds 2 and 3 on an NVIDIA H200, 35 s each; bench/gpu-session.sh):
#   python -m ekinet experiment mnist-dnn2 --size paper --device cuda --methods eki-r --step 12 --step-decay 0.85 \
#     --input-span --centred-draws --seed 2 --out docs/results/gpu/seed2
# Heaviside on Fashion-MNIST with input-span draws, seed 1, the Heaviside network alone (24 minutes):
#   python docs/results/heaviside-paper-cpu-span-seed1/run.py docs/results/heaviside-paper-cpu-span-seed1/heaviside-seed1.json
# The ReLU network, seed 1 (42 minutes beside other work):
#   python docs/results/heaviside-paper-cpu-span-seed1/run.py \
#     docs/results/relu-paper-cpu-span-seed1/relu-seed1.json relu
#   python -m ekinet experiment mnist-dnn2 --size paper --methods eki-r --step 12 --step-decay 0.85 --input-span \
#     --centred-draws --seed 4 --out docs/results/paper-cpu-span-seed4
#   (and --seed 5, 6 into docs/results/paper-cpu-span-seed5, -seed6)
