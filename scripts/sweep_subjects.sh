#!/usr/bin/env bash
# LOSO fine-tuning split across GPUs or CPU workers, then the aggregate step.
#
#   bash scripts/sweep_subjects.sh [--workers N] FINE-TUNE FLAGS...
#
# Without --workers: one process per GPU of CUDA_VISIBLE_DEVICES (all GPUs nvidia-smi lists when
# it is unset), each on its share of the subjects of subName.txt (round robin). With --workers N,
# or without GPUs: N CPU processes (default: one per core), each with an equal share of the cores. Every process writes into the same run folder
# (the run name does not depend on --subjects); a crashed sweep is resumed by running the same
# command again (finished subjects are skipped). Finally `--aggregate_only` computes the pooled
# metrics over all subjects. Example:
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3 bash scripts/sweep_subjects.sh --data_folder DIR --model_path CKPT
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
script="$repo/fine-tune_CVSCL.py"

workers=""
if [[ "${1:-}" == "--workers" ]]; then
    workers="$2"
    shift 2
fi
[[ $# -gt 0 ]] || { echo "usage: $0 [--workers N] FINE-TUNE FLAGS..." >&2; exit 2; }

mapfile -t subjects < <("$python" "$script" "$@" --list_subjects)
[[ ${#subjects[@]} -gt 0 ]] || { echo "error: no subjects to run" >&2; exit 2; }

gpus=()
if [[ -z "$workers" ]]; then
    if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
        IFS=',' read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
    elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
        mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
    fi
    (( ${#gpus[@]} > 0 )) && workers=${#gpus[@]}
fi
cores=$(nproc)
workers=${workers:-$cores}
(( workers > ${#subjects[@]} )) && workers=${#subjects[@]}
threads=$(( cores / workers > 0 ? cores / workers : 1 ))

pids=()
for (( w = 0; w < workers; w++ )); do
    share=()
    for (( i = w; i < ${#subjects[@]}; i += workers )); do share+=("${subjects[i]}"); done
    subject_list=$(IFS=,; echo "${share[*]}")
    if (( ${#gpus[@]} > 0 )); then
        env_vars=(CUDA_VISIBLE_DEVICES="${gpus[w]}")
        echo "worker $w on GPU ${gpus[w]}: $subject_list"
    else
        env_vars=(CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS="$threads")
        echo "worker $w on $threads CPU thread(s): $subject_list"
    fi
    # A subshell, so that `wait` reports the worker's status (pipefail), not sed's.
    ( env "${env_vars[@]}" "$python" "$script" "$@" --subjects "$subject_list" --no_progress 2>&1 \
        | sed -u "s/^/[worker $w] /" ) &
    pids+=($!)
done

failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
"$python" "$script" "$@" --aggregate_only
if (( failed )); then
    echo "error: a worker failed; run the same command again to finish the missing subjects" >&2
    exit 1
fi
