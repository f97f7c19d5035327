#!/usr/bin/env bash
# Pre-training against random init, like a paper's table: on one or more synthetic datasets and
# views, for each pre-training seed, DVSCL pre-training on the whole pool ("plain") and on the pairs
# at or above the intensity threshold ("threshold"), then the k-fold probe, frozen LOSO and
# fine-tuned LOSO of those encoders and of a random one drawn from the same seed; one table of
# mean ± std over the seeds, with each encoder's paired difference to random init and its 95 %
# interval (scripts/experiments/results_table.py --baseline), and the same as a figure (comparison.png). Every
# evaluation of seed S runs with --seed S, so the encoders of one seed share unit seeds, folds,
# batch order, augmentation and head initialisation: their difference is paired. At the scale of
# the demo (scripts/experiments/demo.sh runs this script with one seed).
#
#   bash scripts/experiments/compare.sh [OUT_DIR]                 (default: out/compare)
#
# Environment (default in brackets):
#   DATASETS   NAME=GENERATOR FLAGS;...   ["default=;realistic-mc=--regime realistic --motion_compensation"]
#   VIEWS      views to pre-train and evaluate                       ["RGB_D"]
#   ENCODERS   any of: random plain threshold                        ["random plain threshold"]
#   PROTOCOLS  any of: probe frozen finetune                         ["probe frozen finetune"]
#   SEEDS      pre-training seeds (random init: encoder seeds)       ["0 1 2"]
#   SCALE      demo: 10 labeled subjects; study: 300 labeled subjects (the pool stays at about
#              600 pairs), SEEDS "0 1 2 3 4" and PROTOCOLS "probe frozen" unless given: the scale
#              at which the paired UAR interval's half-width is about 0.025 on the realistic
#              regime (scripts/experiments/study_scale.py; docs/findings/study-scale.md)  [demo]
#   IMAGE_SIZE network input side in pixels; the data are rendered at 9/8 of it     [96]
#   PRETRAIN_EPOCHS [60], PRETRAIN_FLAGS [""], EVAL_FLAGS [""]: extra flags of every pre-training
#              and of every evaluation
#
#   VIEWS="RGB_D RGB_gray" ENCODERS=plain DATASETS="default=" bash scripts/experiments/compare.sh out/views
#
# A finished pre-training is skipped, an interrupted one resumed from its last.pth, and an
# evaluation resumes its finished units when the script runs again, so an interrupted comparison
# resumes. OUT_DIR/run.json (the run record) holds the settings that determine the results; a run
# with other settings refuses that OUT_DIR. Every variable is checked before anything starts.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
fail() { echo "error: $*" >&2; exit 2; }
image_size="${IMAGE_SIZE:-96}"
pretrain_epochs="${PRETRAIN_EPOCHS:-60}"
[[ $image_size =~ ^[0-9]+$ ]] || fail "IMAGE_SIZE=$image_size: expected a whole number of pixels"
[[ $pretrain_epochs =~ ^[1-9][0-9]*$ ]] || fail "PRETRAIN_EPOCHS=$pretrain_epochs: expected a whole number > 0"
IFS=';' read -r -a datasets <<< "${DATASETS-default=;realistic-mc=--regime realistic --motion_compensation}"
read -r -a views <<< "${VIEWS:-RGB_D}"
read -r -a encoders <<< "${ENCODERS:-random plain threshold}"
scale="${SCALE:-demo}"
case $scale in
    demo) scale_flags=() default_seeds="0 1 2" default_protocols="probe frozen finetune" ;;
    study) scale_flags=(--subjects 300 --pool_per_subject 2) default_seeds="0 1 2 3 4" default_protocols="probe frozen" ;;
    *) fail "SCALE=$scale: expected demo or study" ;;
esac
read -r -a protocols <<< "${PROTOCOLS:-$default_protocols}"
read -r -a seeds <<< "${SEEDS:-$default_seeds}"
read -r -a extra_pretrain <<< "${PRETRAIN_FLAGS:-}"
read -r -a extra_eval <<< "${EVAL_FLAGS:-}"
one_of() {  # one_of VARIABLE "ALLOWED..." VALUES...: there is a value, and each is one of ALLOWED
    local variable="$1" allowed="$2"
    shift 2
    (($# > 0)) || fail "$variable is empty: expected some of: $allowed"
    for value in "$@"; do
        [[ " $allowed " == *" $value "* ]] || fail "$variable: '$value' is not one of: $allowed"
    done
}
one_of ENCODERS "random plain threshold" "${encoders[@]}"
one_of PROTOCOLS "probe frozen finetune" "${protocols[@]}"
one_of VIEWS "RGB_D RGB_gray" "${views[@]}"
((${#seeds[@]} > 0)) || fail "SEEDS is empty: expected seeds such as '0 1 2'"
for seed in "${seeds[@]}"; do
    [[ $seed =~ ^[0-9]+$ ]] || fail "SEEDS: '$seed' is not a seed (a whole number >= 0)"
done
((${#datasets[@]} > 0)) || fail "DATASETS is empty: expected NAME=GENERATOR FLAGS;..."
declare -A dataset_seen=()
for entry in "${datasets[@]}"; do
    [[ $entry == *=* ]] || fail "DATASETS: '$entry' is not NAME=GENERATOR FLAGS"
    name="${entry%%=*}"
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || fail "DATASETS: '$name' is not a folder name (letters, digits, . _ -)"
    [[ -z ${dataset_seen[$name]:-} ]] || fail "DATASETS: '$name' is named twice"
    dataset_seen[$name]=1
done
out_arg="${1:-$repo/out/compare}"
[[ ! -e $out_arg || -d $out_arg ]] || fail "$out_arg: OUT_DIR is not a folder"
mkdir -p "$out_arg" 2> /dev/null || fail "$out_arg: cannot create OUT_DIR"
out="$(cd "$out_arg" && pwd)"
logs="$out/logs"
cd "$repo"

# The folder is this comparison's, or refused in one line; the record is written through a rename,
# so comparisons started alongside (another seed into the same OUT_DIR) never read half of it.
"$python" - "$out" "${DATASETS-default=;realistic-mc=--regime realistic --motion_compensation}" "$image_size" \
    "$pretrain_epochs" "${extra_pretrain[*]}" "${extra_eval[*]}" "$scale" << 'EOF' || exit 2
import sys
import util
folder, datasets, image_size, epochs, pretrain_flags, eval_flags, scale = sys.argv[1:]
settings = {"datasets": datasets, "image_size": int(image_size), "pretrain_epochs": int(epochs),
            "pretrain_flags": pretrain_flags, "eval_flags": eval_flags, "scale": scale}
util.run_cli(lambda: util.claim_folder(folder, "scripts/experiments/compare.sh", settings,
                                       ("logs", "results_table.txt", "comparison.png"), overwrite=None).save())
EOF
mkdir -p "$logs"

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

complete() {  # complete FOLDER: its run record says that its run finished
    "$python" -c 'import sys, util; r = util.read_record(sys.argv[1]); sys.exit(0 if r and r.complete else 1)' \
        "$1" 2> /dev/null
}

rows=()
for entry in "${datasets[@]}"; do
    name="${entry%%=*}" generator_flags=()
    read -r -a generator_flags <<< "${entry#*=}"
    data="$out/$name/data"
    if ! complete "$data"; then
        say "$name: synthetic data ${generator_flags[*]}"
        run "${name}_data" "$python" scripts/data/make_synthetic_casme3.py --out "$data" --seed 0 --samples_per_subject 10 \
            "${scale_flags[@]}" \
            --image_size $((image_size * 9 / 8)) "${generator_flags[@]}"
    fi
    # the threshold that best separates the pool's pairs without action, and the epochs that give
    # the thresholded run as many steps as the plain one (0 when it holds less than one batch)
    read -r threshold threshold_epochs < <("$python" - "$data" "$pretrain_epochs" "$batch_size" << 'EOF'
import sys
import util
pool = util.read_record(sys.argv[1]).details["pool"]
epochs, batch = int(sys.argv[2]), int(sys.argv[3])
steps = pool["kept"] // batch
print(pool["intensity_threshold"], round(epochs * (pool["pairs"] // batch) / steps) if steps else 0)
EOF
    )
    if [[ " ${encoders[*]} " == *" threshold "* ]] && ((threshold_epochs == 0)); then
        fail "$data: the pool above the intensity threshold $threshold holds less than one batch ($batch_size pairs); leave threshold out of ENCODERS"
    fi
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
                    if ! complete "$(dirname "$model_path")"; then
                        resume=()
                        [[ -f "$model_path" ]] && resume=(--resume "$model_path")
                        say "$name: pre-training $encoder, --view $view --seed $seed ($epochs epochs${resume:+, resumed})"
                        run "pretrain_$tag" "$python" pre-train_CVSCL.py --data_folder "$data" \
                            --model_path "$out/$name/models" --tb_path "$out/$name/tb" --num_workers 0 \
                            --image_size "$image_size" "${pretrain_flags[@]}" "${filter[@]}" --epochs "$epochs" \
                            --save_freq "$epochs" --view "$view" --seed "$seed" --run_name "${view}_${encoder}_seed${seed}" \
                            "${resume[@]}" "${extra_pretrain[@]}"
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
"$python" scripts/experiments/results_table.py "${compared[@]}" "${rows[@]}" | tee "$out/results_table.txt"
echo "mean ± std over seeds ${seeds[*]}; table: $out/results_table.txt${compared:+; figure: $out/comparison.png}; logs: $logs"
