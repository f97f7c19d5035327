#!/usr/bin/env bash
# Pre-training against random init, like a paper's table: on one or more synthetic datasets and
# views, for each pre-training seed, DVSCL pre-training on the whole pool ("plain") and on the pairs
# at or above the intensity threshold ("threshold"), then the k-fold probe, frozen LOSO and
# fine-tuned LOSO of those encoders and of a random one drawn from the same seed; one table of
# mean ± std over the seeds, with each encoder's paired difference to random init and its 95 %
# interval (scripts/results_table.py --baseline), and the same as a figure (comparison.png). Every
# evaluation of seed S runs with --seed S, so the encoders of one seed share unit seeds, folds,
# batch order, augmentation and head initialisation: their difference is paired. At the scale of
# the demo (scripts/demo.sh runs this script with one seed).
#
#   bash scripts/compare.sh [OUT_DIR]                 (default: out/compare)
#
# Environment (default in brackets):
#   DATASETS   NAME=GENERATOR FLAGS;...   ["default=;realistic-mc=--regime realistic --motion_compensation"]
#   VIEWS      views to pre-train and evaluate                       ["RGB_D"]
#   ENCODERS   any of: random plain threshold                        ["random plain threshold"]
#   PROTOCOLS  any of: probe frozen finetune                         ["probe frozen finetune"]
#   SEEDS      pre-training seeds (random init: encoder seeds)       ["0 1 2"]
#   IMAGE_SIZE network input side in pixels; the data are rendered at 9/8 of it     [96]
#   PRETRAIN_EPOCHS [60], PRETRAIN_FLAGS [""], EVAL_FLAGS [""]: extra flags of every pre-training
#              and of every evaluation
#
#   VIEWS="RGB_D RGB_gray" ENCODERS=plain DATASETS="default=" bash scripts/compare.sh out/views
#
# A finished pre-training is skipped and an evaluation resumes its finished units when the script
# runs again, so an interrupted comparison resumes; OUT_DIR/settings.txt records the settings, and a
# run with other settings refuses that OUT_DIR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
image_size="${IMAGE_SIZE:-96}"
[[ $image_size =~ ^[0-9]+$ ]] || { echo "error: IMAGE_SIZE=$image_size: expected a whole number of pixels" >&2; exit 2; }
mkdir -p "${1:-$repo/out/compare}"
out="$(cd "${1:-$repo/out/compare}" && pwd)"
IFS=';' read -r -a datasets <<< "${DATASETS-default=;realistic-mc=--regime realistic --motion_compensation}"
read -r -a views <<< "${VIEWS:-RGB_D}"
read -r -a encoders <<< "${ENCODERS:-random plain threshold}"
read -r -a protocols <<< "${PROTOCOLS:-probe frozen finetune}"
read -r -a seeds <<< "${SEEDS:-0 1 2}"
read -r -a extra_pretrain <<< "${PRETRAIN_FLAGS:-}"
read -r -a extra_eval <<< "${EVAL_FLAGS:-}"
pretrain_epochs="${PRETRAIN_EPOCHS:-60}"
logs="$out/logs"
mkdir -p "$logs"
cd "$repo"

settings="datasets: ${DATASETS-default=;realistic-mc=--regime realistic --motion_compensation}
image size: $image_size
pretrain epochs: $pretrain_epochs
pretrain flags: ${extra_pretrain[*]}
eval flags: ${extra_eval[*]}"
if [[ -f "$out/settings.txt" ]] && [[ "$(cat "$out/settings.txt")" != "$settings" ]]; then
    echo "error: $out/settings.txt: this folder holds a comparison of other settings; pass another OUT_DIR" >&2
    exit 2
fi
# written through a rename, so that a comparison started alongside (another seed into the same
# OUT_DIR) never reads a half-written file
printf '%s\n' "$settings" > "$out/settings.txt.$$"
mv "$out/settings.txt.$$" "$out/settings.txt"

# Demo scale. Full-scale settings are the scripts' defaults (README.md); at 96 px alexnet's conv5
# keeps a spatial map (2 x 2; below 95 px it is 1 x 1). The thresholded pool is
# smaller than the whole pool, so its run gets proportionally more epochs: both runs take the same
# number of SGD steps. The probe and both LOSO protocols train 30 epochs.
batch_size=32
pretrain_flags=(--model alexnet --batch_size "$batch_size" --nce_k 256 --learning_rate 0.03 --softmax)
declare -A protocol_script=([probe]=LinearProbing_CVSCL_10fold.py [frozen]=fine-tune_CVSCL.py [finetune]=fine-tune_CVSCL.py)
declare -A protocol_flags=([probe]="" [frozen]=--freeze_encoder [finetune]="")
declare -A encoder_label=([random]="random init" [plain]="DVSCL" [threshold]="DVSCL + intensity threshold")
declare -A protocol_label=([probe]="k-fold probe" [frozen]="frozen LOSO" [finetune]="fine-tuned LOSO")

start=$SECONDS
say() { printf '[%5d s] %s\n' $((SECONDS - start)) "$*"; }
run() {  # run LOG COMMAND...: output to logs/LOG.*; on failure show their end
    local log="$1"
    shift
    if ! "$@" > "$logs/$log.log" 2> "$logs/$log.err"; then
        echo "error: step '$log' failed; the end of $logs/$log.*:" >&2
        tail -n 5 "$logs/$log.log" "$logs/$log.err" >&2
        exit 1
    fi
}

rows=()
for entry in "${datasets[@]}"; do
    name="${entry%%=*}" generator_flags=()
    read -r -a generator_flags <<< "${entry#*=}"
    data="$out/$name/data"
    if [[ ! -f "$data/synthetic_casme3.json" ]] || ! grep -q '"complete": true' "$data/synthetic_casme3.json"; then
        say "$name: synthetic data ${generator_flags[*]}"
        run "${name}_data" "$python" scripts/make_synthetic_casme3.py --out "$data" --seed 0 --samples_per_subject 10 \
            --image_size $((image_size * 9 / 8)) "${generator_flags[@]}"
    fi
    # the threshold that best separates the pool's pairs without action, and the epochs that give
    # the thresholded run as many steps as the plain one
    read -r threshold threshold_epochs < <("$python" -c '
import json, sys
pool = json.load(open(sys.argv[1]))["pool"]
epochs, batch = int(sys.argv[2]), int(sys.argv[3])
print(pool["intensity_threshold"], round(epochs * (pool["pairs"] // batch) / (pool["kept"] // batch)))' \
        "$data/synthetic_casme3.json" "$pretrain_epochs" "$batch_size")
    for view in "${views[@]}"; do
        declare -A runs=()
        for seed in "${seeds[@]}"; do
            for encoder in "${encoders[@]}"; do
                tag="${name}_${view}_${encoder}_seed${seed}"
                model_path=none
                if [[ $encoder != random ]]; then
                    epochs=$pretrain_epochs filter=()
                    [[ $encoder == threshold ]] && epochs=$threshold_epochs filter=(--intensity_threshold "$threshold")
                    model_path="$out/$name/models/${view}_${encoder}_seed${seed}/last.pth"
                    if [[ ! -f "$model_path" ]]; then
                        say "$name: pre-training $encoder, --view $view --seed $seed ($epochs epochs)"
                        run "pretrain_$tag" "$python" pre-train_CVSCL.py --data_folder "$data" \
                            --model_path "$out/$name/models" --tb_path "$out/$name/tb" --num_workers 0 \
                            --image_size "$image_size" "${pretrain_flags[@]}" "${filter[@]}" --epochs "$epochs" \
                            --save_freq "$epochs" --view "$view" --seed "$seed" --run_name "${view}_${encoder}_seed${seed}" \
                            --overwrite "${extra_pretrain[@]}"
                    fi
                fi
                for protocol in "${protocols[@]}"; do
                    # always run: an evaluation skips its finished units itself, and refuses a folder of
                    # other settings (another version's defaults) instead of reporting its results
                    eval_dir="$out/$name/eval/${protocol}_${view}_${encoder}_seed${seed}"
                    say "$name: ${protocol_label[$protocol]} of $encoder, --view $view, seed $seed"
                    # shellcheck disable=SC2086  # protocol_flags holds zero or one flag
                    run "${protocol}_$tag" "$python" "${protocol_script[$protocol]}" --data_folder "$data" \
                        --save_path "$out/$name/eval" --image_size "$image_size" --num_workers 0 --no_progress \
                        --model alexnet --model_path "$model_path" --view "$view" --epochs 30 \
                        --run_name "$(basename "$eval_dir")" ${protocol_flags[$protocol]} --seed "$seed" \
                        "${extra_eval[@]}"
                    runs[$encoder/$protocol]+="${runs[$encoder/$protocol]:+,}$eval_dir"
                done
            done
        done
        for protocol in "${protocols[@]}"; do
            for encoder in "${encoders[@]}"; do
                rows+=("$name, $view, ${encoder_label[$encoder]}, ${protocol_label[$protocol]}=${runs[$encoder/$protocol]}")
            done
        done
        unset runs
    done
done

say "done"
compared=()
[[ " ${encoders[*]} " == *" random "* ]] && compared=(--baseline "random init" --plot "$out/comparison.png")
"$python" scripts/results_table.py "${compared[@]}" "${rows[@]}" | tee "$out/results_table.txt"
echo "mean ± std over seeds ${seeds[*]}; table: $out/results_table.txt${compared:+; figure: $out/comparison.png}; logs: $logs"
