#!/usr/bin/env bash
# LOSO fine-tuning split across GPUs or CPU workers (and nodes), then the aggregate step.
#
#   bash scripts/cluster/sweep_subjects.sh [--workers N] [--nodes M --node_rank K] FINE-TUNE FLAGS...
#
# Without --workers: one process per GPU of CUDA_VISIBLE_DEVICES (all GPUs nvidia-smi lists when
# it is unset). With --workers N, or without GPUs: N CPU processes (default: one per core), each
# with an equal share of the cores. Each of the G processes of a node runs `--shard S/(M*G)` of
# the subjects (round robin over subName.txt, or over --subjects), where node K of M runs shards
# K*G .. K*G+G-1 (default: one node, K = 0). Every process writes its subjects' unit files into the
# same run folder (the run name depends on neither --subjects nor --shard; with several nodes it
# must be on a shared file system); a crashed sweep is resumed by running the same command again
# (finished subjects are skipped). Finally, on a single node, `--aggregate_only` pools all subjects
# into results.json; it refuses, naming them, while subjects are missing. With several nodes run
# `python fine-tune_CVSCL.py FLAGS --aggregate_only` once every node has finished. Examples:
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3 bash scripts/cluster/sweep_subjects.sh --data_folder DIR --model_path CKPT
#   srun --nodes 2 --ntasks-per-node 1 bash -c 'bash scripts/cluster/sweep_subjects.sh --nodes "$SLURM_NNODES" \
#       --node_rank "$SLURM_NODEID" --data_folder DIR --model_path CKPT'
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
script="$repo/fine-tune_CVSCL.py"

fail() { echo "error: $*" >&2; exit 2; }
# The value of the flag $1 (in $2, present when $3 is 2 or more): a whole number, at least $4.
# Checked here because bash arithmetic reads a word as a variable name and reports its own errors.
number() {
    (( $3 >= 2 )) && [[ "$2" != --* ]] || fail "$1: missing value (expected a whole number)"
    [[ "$2" =~ ^[0-9]{1,9}$ ]] && (( 10#$2 >= $4 )) || fail "$1 $2: expected a whole number >= $4"
    echo $(( 10#$2 ))
}

workers=""
nodes=1
node_rank=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workers) workers=$(number "$1" "${2-}" $# 1) || exit 2 ;;
        --nodes) nodes=$(number "$1" "${2-}" $# 1) || exit 2 ;;
        --node_rank) node_rank=$(number "$1" "${2-}" $# 0) || exit 2 ;;
        *) break ;;
    esac
    shift 2
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--workers N] [--nodes M --node_rank K] FINE-TUNE FLAGS..." >&2; exit 2; }
(( nodes >= 1 && node_rank >= 0 && node_rank < nodes )) \
    || { echo "error: --node_rank $node_rank --nodes $nodes: need 0 <= K < M" >&2; exit 2; }

# fine-tune_CVSCL.py's own error line (bad flags, missing lists) ends the sweep with its status
listed=$("$python" "$script" "$@" --list_subjects) || exit $?
[[ -n "$listed" ]] || fail "no subjects to run"
mapfile -t subjects <<< "$listed"

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
(( workers * nodes > ${#subjects[@]} )) && workers=$(( (${#subjects[@]} + nodes - 1) / nodes ))
threads=$(( cores / workers > 0 ? cores / workers : 1 ))
shards=$(( nodes * workers ))

pids=()
for (( w = 0; w < workers; w++ )); do
    shard="$(( node_rank * workers + w ))/$shards"
    if (( ${#gpus[@]} > 0 )); then
        env_vars=(CUDA_VISIBLE_DEVICES="${gpus[w]}")
        echo "worker $w (shard $shard) on GPU ${gpus[w]}"
    else
        env_vars=(CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS="$threads")
        echo "worker $w (shard $shard) on $threads CPU thread(s)"
    fi
    # A subshell, so that `wait` reports the worker's status (pipefail), not sed's.
    ( env "${env_vars[@]}" "$python" "$script" "$@" --shard "$shard" --no_progress 2>&1 \
        | sed -u "s/^/[worker $w] /" ) &
    pids+=($!)
done

failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if (( failed )); then
    echo "error: a worker failed; run the same command again to finish the missing subjects" >&2
    exit 1
fi
if (( nodes > 1 )); then
    echo "node $node_rank of $nodes done; once every node has finished, pool the subjects with:"
    echo "  $python $script$(printf ' %q' "$@") --aggregate_only"
    exit 0
fi
"$python" "$script" "$@" --aggregate_only
