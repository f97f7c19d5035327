#!/usr/bin/env bash
# The whole pipeline on synthetic data, in under 10 minutes on 2 CPU cores:
#   1. a synthetic CAS(ME)^3-like dataset: 10 subjects with about 10 labeled pairs each, as
#      CAS(ME)^3 (943 labeled samples over 95 subjects), and a pool of 600 unlabeled pairs
#   2. DVSCL pre-training twice: on the whole pool, and on the pairs above the intensity threshold
#   3. k-fold linear probes (subject-grouped folds) of a random encoder and both pre-trained ones
#   4. LOSO fine-tuning of the same three encoders
#   5. one table of acc / UF1 / UAR (results_table.txt), every run's results.json beside it
#
#   bash scripts/demo.sh [OUT_DIR]        (default: out/demo)
#   PRETRAIN_EPOCHS=200 bash scripts/demo.sh OUT_DIR     (longer pre-training; default 60)
#
# OUT_DIR/data is the dataset; models/, tb/, eval/ and logs/ are rebuilt on every run.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
mkdir -p "${1:-$repo/out/demo}"
out="$(cd "${1:-$repo/out/demo}" && pwd)"
data="$out/data" logs="$out/logs" eval="$out/eval"
rm -rf "$out/models" "$out/tb" "$eval" "$logs"
mkdir -p "$logs"
cd "$repo"

# Demo scale. Full-scale settings are the scripts' defaults (see README.md). Pre-training gets what
# the time budget leaves: the longer it runs, the better its encoders (README, "The demo"). The
# thresholded pool is about half the pool, so its run gets proportionally more epochs: both runs
# take the same number of SGD steps. LOSO keeps fine-tune_CVSCL.py's default budget of 30 epochs.
image_size=64
batch_size=32
pretrain_epochs="${PRETRAIN_EPOCHS:-60}"
pretrain_flags=(--model alexnet --batch_size "$batch_size" --nce_k 256 --learning_rate 0.03 --softmax)
probe_flags=(--epochs 30)
loso_flags=(--epochs 30)

start=$SECONDS
say() { printf '[%3d s] %s\n' $((SECONDS - start)) "$*"; }

# run LOG COMMAND...: stdout to logs/LOG.log, progress bars to logs/LOG.err; on failure show both.
run() {
    local log="$1"
    shift
    if ! "$@" > "$logs/$log.log" 2> "$logs/$log.err"; then
        echo "error: step '$log' failed; the end of $logs/$log.*:" >&2
        tail -n 5 "$logs/$log.log" "$logs/$log.err" >&2
        exit 1
    fi
}

say "synthetic data -> $data"
run data "$python" scripts/make_synthetic_casme3.py --out "$data" --seed 0 --samples_per_subject 10
# the threshold that best separates the generator's noise-only pairs, and the epochs that give the
# thresholded run as many steps (batches of the kept pairs) as the plain run
read -r threshold threshold_epochs < <("$python" -c '
import json, sys
pool = json.load(open(sys.argv[1]))["pool"]
epochs, batch = int(sys.argv[2]), int(sys.argv[3])
print(pool["intensity_threshold"], round(epochs * (pool["pairs"] // batch) / (pool["kept"] // batch)))' \
    "$data/synthetic_casme3.json" "$pretrain_epochs" "$batch_size")

declare -A checkpoint
for variant in plain threshold; do
    epochs=$pretrain_epochs filter=()
    [[ $variant == threshold ]] && epochs=$threshold_epochs filter=(--intensity_threshold "$threshold")
    say "pre-training ($variant pool${filter:+, intensity >= $threshold}, $epochs epochs)"
    run "pretrain_$variant" "$python" pre-train_CVSCL.py --data_folder "$data" --model_path "$out/models" \
        --tb_path "$out/tb" --num_workers 0 --image_size "$image_size" "${pretrain_flags[@]}" "${filter[@]}" \
        --epochs "$epochs" --save_freq "$epochs"  # one checkpoint, at the end
    folder=$(tail -n 1 "$logs/pretrain_$variant.log")
    checkpoint[$variant]="${folder#checkpoints: }/last.pth"
done

encoders=(random plain threshold)
declare -A model_path=([random]=none [plain]="${checkpoint[plain]}" [threshold]="${checkpoint[threshold]}")
common=(--data_folder "$data" --save_path "$eval" --image_size "$image_size" --num_workers 0 --no_progress)
for encoder in "${encoders[@]}"; do
    say "k-fold linear probe: $encoder encoder"
    run "probe_$encoder" "$python" LinearProbing_CVSCL_10fold.py "${common[@]}" --model_path "${model_path[$encoder]}" \
        --model alexnet --run_name "probe_$encoder" "${probe_flags[@]}"
done
for encoder in "${encoders[@]}"; do
    say "LOSO fine-tuning: $encoder encoder"
    run "loso_$encoder" "$python" fine-tune_CVSCL.py "${common[@]}" --model_path "${model_path[$encoder]}" \
        --model alexnet --run_name "loso_$encoder" "${loso_flags[@]}"
done

say "done"
"$python" scripts/results_table.py \
    "random init, frozen=$eval/probe_random" \
    "DVSCL, frozen=$eval/probe_plain" \
    "DVSCL + intensity threshold, frozen=$eval/probe_threshold" \
    "random init, fine-tuned=$eval/loso_random" \
    "DVSCL, fine-tuned=$eval/loso_plain" \
    "DVSCL + intensity threshold, fine-tuned=$eval/loso_threshold" | tee "$out/results_table.txt"
echo "results: $eval/*/results.json; table: $out/results_table.txt; logs: $logs"
