#!/usr/bin/env bash
# RGB + depth against RGB + grey (the published --view ablation) on the synthetic data, at the
# demo's scale, over several pre-training seeds: for each view and seed, DVSCL pre-training, the
# k-fold probe of the frozen encoder and LOSO fine-tuning; then one table of mean ± std over seeds.
#
#   bash scripts/compare_views.sh [OUT_DIR]          (default: out/compare_views; seeds 0 1 2)
#   SEEDS="0 1 2 3 4" bash scripts/compare_views.sh OUT_DIR
#
# OUT_DIR/data is the dataset (made once); a finished pre-training or evaluation is kept and
# skipped when the script runs again, so an interrupted comparison resumes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
mkdir -p "${1:-$repo/out/compare_views}"
out="$(cd "${1:-$repo/out/compare_views}" && pwd)"
read -r -a seeds <<< "${SEEDS:-0 1 2}"
data="$out/data" logs="$out/logs" eval="$out/eval"
mkdir -p "$logs"
cd "$repo"

# The demo's settings (scripts/demo.sh), so that the RGB + depth rows are the demo's DVSCL rows.
image_size=64
pretrain_flags=(--model alexnet --batch_size 32 --nce_k 256 --learning_rate 0.03 --softmax --epochs 60 --save_freq 60)
common=(--data_folder "$data" --save_path "$eval" --image_size "$image_size" --num_workers 0 --no_progress --model alexnet)

start=$SECONDS
say() { printf '[%4d s] %s\n' $((SECONDS - start)) "$*"; }
run() {  # run LOG COMMAND...: output to logs/LOG.*; on failure show their end
    local log="$1"
    shift
    if ! "$@" > "$logs/$log.log" 2> "$logs/$log.err"; then
        echo "error: step '$log' failed; the end of $logs/$log.*:" >&2
        tail -n 5 "$logs/$log.log" "$logs/$log.err" >&2
        exit 1
    fi
}

if [[ ! -f "$data/synthetic_casme3.json" ]]; then
    say "synthetic data -> $data"
    run data "$python" scripts/make_synthetic_casme3.py --out "$data" --seed 0 --samples_per_subject 10
fi

declare -A probe_runs loso_runs
for view in RGB_D RGB_gray; do
    for seed in "${seeds[@]}"; do
        name="${view}_seed${seed}"
        checkpoint="$out/models/$name/last.pth"
        if [[ ! -f "$checkpoint" ]]; then
            say "pre-training: --view $view --seed $seed"
            run "pretrain_$name" "$python" pre-train_CVSCL.py --data_folder "$data" --model_path "$out/models" \
                --tb_path "$out/tb" --num_workers 0 --image_size "$image_size" "${pretrain_flags[@]}" \
                --view "$view" --seed "$seed" --run_name "$name" --overwrite
        fi
        for protocol in probe loso; do
            if [[ ! -f "$eval/${protocol}_$name/results.json" ]]; then
                say "$protocol: --view $view, pre-training seed $seed"
                if [[ $protocol == probe ]]; then
                    script=LinearProbing_CVSCL_10fold.py extra=(--epochs 30)
                else
                    script=fine-tune_CVSCL.py extra=(--epochs 30)
                fi
                run "${protocol}_$name" "$python" "$script" "${common[@]}" --model_path "$checkpoint" --view "$view" \
                    --run_name "${protocol}_$name" "${extra[@]}"
            fi
        done
        probe_runs[$view]+="${probe_runs[$view]:+,}$eval/probe_$name"
        loso_runs[$view]+="${loso_runs[$view]:+,}$eval/loso_$name"
    done
done

say "done"
"$python" scripts/results_table.py \
    "DVSCL RGB + depth, frozen=${probe_runs[RGB_D]}" \
    "DVSCL RGB + grey, frozen=${probe_runs[RGB_gray]}" \
    "DVSCL RGB + depth, fine-tuned=${loso_runs[RGB_D]}" \
    "DVSCL RGB + grey, fine-tuned=${loso_runs[RGB_gray]}" | tee "$out/results_table.txt"
echo "mean ± std over pre-training seeds ${seeds[*]}; table: $out/results_table.txt; logs: $logs"
