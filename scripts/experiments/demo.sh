#!/usr/bin/env bash
# The whole pipeline on synthetic data, in about 25 minutes on 2 CPU cores: scripts/experiments/compare.sh on
# the default synthetic dataset with one seed.
#   1. a synthetic CAS(ME)^3-like dataset: 10 subjects with about 10 labeled pairs each, as
#      CAS(ME)^3 (943 labeled samples over 95 subjects), and a pool of 600 unlabeled pairs
#   2. DVSCL pre-training twice: on the whole pool, and on the pairs above the intensity threshold
#   3. the k-fold linear probe, frozen LOSO and LOSO fine-tuning of a random encoder and of both
#      pre-trained ones
#   4. one table of acc / UF1 / UAR with each encoder's paired difference to random init
#      (OUT_DIR/results_table.txt, OUT_DIR/comparison.png), every run's results.json under
#      OUT_DIR/default/eval/
#
#   bash scripts/experiments/demo.sh [OUT_DIR]        (default: out/demo)
#   PRETRAIN_EPOCHS=200 bash scripts/experiments/demo.sh OUT_DIR     (longer pre-training; default 60)
#   IMAGE_SIZE=64 bash scripts/experiments/demo.sh OUT_DIR           (a 64 px input, 0.44 of the pixels; default 96)
#   DATASETS="default=--subjects 4" bash scripts/experiments/demo.sh OUT_DIR   (generator flags: a smaller demo)
#
# One seed is one draw: scripts/experiments/compare.sh (three seeds, and the realistic regime) gives mean ± std
# and each encoder's difference to random init with its interval.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATASETS="${DATASETS-default=}" SEEDS=0 VIEWS=RGB_D ENCODERS="random plain threshold" \
    PROTOCOLS="probe frozen finetune" exec bash "$repo/scripts/experiments/compare.sh" "${1:-$repo/out/demo}"
