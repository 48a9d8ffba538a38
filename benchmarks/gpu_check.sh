#!/usr/bin/env bash
# The GPU check in one go, on one CUDA GPU: README's one-GPU command
# (accelerate launch --config_file accelerate_config.yaml train.py) with seeds 42 (its run kept whole, as
# training_logs/ keeps a record run), 1 and 2, and seed 42 again with its step launched eagerly
# (--no_cuda_graph), each checked by evaluate.py; the throughput benchmark; the CUDA tests; and, if time is
# left, evaluate.py sharded over two processes on the one GPU against one process, a profile of the training
# step, and the step eager, replayed from a CUDA graph and through torch.compile (with and without CUDA
# graphs), these three with cuDNN's heuristics.
#
#   bash benchmarks/gpu_check.sh DATA_DIR OUT_DIR [--smoke] [--budget SECONDS]
#
# DATA_DIR holds MNIST/raw/ (the *-ubyte.gz archives); it is only read. The check installs nothing and tracks
# nothing (--report_to none): python3 with torch, torchvision, accelerate, torchmetrics, matplotlib, pytest
# and tqdm is all it needs. OUT_DIR (new or empty) receives eight files, each well under 16 MB:
#   gpu.txt             the card, as nvidia-smi names it
#   cuda_tests.txt      pytest tests/test_cuda.py
#   benchmark_gpu.json  benchmarks/throughput.py's default on a GPU: the classic DataLoader pipeline against
#                       train.py's step in bf16, eager and from a CUDA graph with cuDNN's autotuning (the
#                       default), same run, same card
#   record.tar          the seed-42 run as its folder holds it: logs/ (console.log, metrics.jsonl,
#                       test_metrics.json, the three figures) and best.pt
#   seeds.json          per seed: test accuracies, best epoch, wall seconds from launch to exit, steady epoch
#                       training seconds, seconds from launch to 99.0 % and 99.5 % validation joint accuracy,
#                       seconds before the first epoch and after the last validation, the card, whether
#                       evaluate.py reproduced the test report; mean and std; the same for the record's seed
#                       trained with the eager step (--no_cuda_graph)
#   two_processes.json  evaluate.py over two processes sharing the GPU against one process
#   benchmark_compile.json  benchmarks/throughput.py: bf16 eager against the CUDA-graph step and against
#                       torch.compile, without and with CUDA graphs (mode reduce-overhead), same run, same card
#   check.log           everything the steps printed, each step stamped with the time; the profile of the
#                       training step (benchmarks/profile_step.py) is only there
# The check keeps within --budget seconds (default 480; with --smoke 1,920): each step is cut off at its own
# budget or at the deadline, and a step for which less than half its budget is left is skipped with a note;
# the others still run. The exit status is 0 when no step failed or timed out.
#
# --smoke: the same steps and files on the CPU (CUDA hidden), to know the script works before GPU time is
# spent on it: 2 epochs of a tiny model, seeds 42 and 1, the benchmarks at the same size, torch.compile's
# "eager" backend (the compiled pipelines' plumbing without their code generation). On tiny data it takes
# a minute or two; tests/test_gpu_check.py runs it on tiny synthetic MNIST, as this does (from the
# repository's root, where tests/conftest.py finds the adder package):
#   python3 -c 'import sys; sys.path.insert(0, "tests"); import conftest; conftest.make_mnist_dir(
#       conftest.Path("/tmp/tiny"), n_train=600, n_test=51)'
#   bash benchmarks/gpu_check.sh /tmp/tiny /tmp/gpu_check_smoke --smoke
set -uo pipefail

usage="usage: bash benchmarks/gpu_check.sh DATA_DIR OUT_DIR [--smoke] [--budget SECONDS]"
(( $# >= 2 )) || { echo "$usage" >&2; exit 2; }
data=$1 out=$2
shift 2
default_budget=480 budget=
source "$(dirname "$0")/gpu_options.sh" && parse_options "$@"
mkdir -p "$out" || exit 2
[[ -z $(ls -A "$out") ]] || { echo "error: $out is not empty: the check writes into a new or empty folder" >&2; exit 2; }
data=$(cd "$data" && pwd) out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."

# Each step's budget in seconds: a generous guess at what it takes on an H100 or H200 (two to three times the
# expected time; the whole check took about seven minutes on an H200), most for the record's run, which
# comes first. The reserve covers a step's grace period after being cut off, the summary and the tar.
seeds=(42 1 2)
# cuda_tests: 116 s on an H200 at e5b3ae4 (docs/h200_search/cuda_tests_e40_search.log).
gpu_budget=20 train_budget=150 evaluate_budget=45 benchmark_budget=120 cuda_tests_budget=200 two_processes_budget=60
profile_budget=60 compile_budget=200
reserve=30
device=cuda size_flags=()  # train.py's settings, for the training runs and the benchmark; none: its defaults
profile_flags=() compile_backend=inductor
if $smoke; then
    export CUDA_VISIBLE_DEVICES=""
    seeds=(42 1)
    device=cpu
    size_flags=(--epochs 2 --val_size 100 --batch_size 100 --widths 4,4 8,8 8 --sum_hidden 16)
    profile_flags=(--steps 2)  # an epoch of the tiny data is 5 steps
    compile_backend=eager
    # A dry run checks the plumbing, not the speed: each step gets four times its GPU budget, and the whole
    # check too unless --budget says otherwise, so that a slow CPU cuts none off.
    for step in gpu train evaluate benchmark cuda_tests two_processes profile compile; do
        declare "${step}_budget=$(( ${step}_budget * 4 ))"
    done
    budget=${budget:-$(( 4 * default_budget ))}
fi
budget=${budget:-$default_budget}
deadline=$(( budget - reserve ))

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/steps" "$work/runs" "$work/data/MNIST"
log=$out/check.log

say() { printf '[%s +%ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*" | tee -a "$log"; }

# run_step NAME BUDGET COMMAND...: runs COMMAND, cut off after BUDGET seconds or at the deadline. What it
# printed (progress bars dropped) goes to check.log and steps/NAME.txt, its outcome, seconds and launch time to
# steps/NAME.json. Its output goes to a file, not a pipe, so that a process it leaves behind when cut off
# cannot hold the check up.
run_step() {
    local name=$1 step_budget=$2 outcome rc limit start
    shift 2
    local left=$(( deadline - SECONDS ))
    start=$(date +%s%N)
    if (( left < step_budget / 2 )); then
        outcome="skipped: ${left} s of the check's budget left, this step's is ${step_budget} s"
        say "$name: $outcome"
    else
        limit=$(( left < step_budget ? left : step_budget ))
        say "$name: $* (budget ${limit} s)"
        timeout --kill-after=20 "$limit" "$@" > "$work/steps/$name.raw" 2>&1
        rc=$?
        if (( rc == 0 )); then
            outcome=ok
        elif (( rc == 124 || rc == 137 )); then  # timeout's own codes: cut off, or killed after the grace period
            outcome="timed out after ${limit} s"
        else
            outcome="failed (exit $rc)"
        fi
        tr '\r' '\n' < "$work/steps/$name.raw" | grep -v -E '^\s*$|it/s\]|s/it\]' > "$work/steps/$name.txt"
        tee -a "$log" < "$work/steps/$name.txt"
    fi
    local ms=$(( ($(date +%s%N) - start) / 1000000 ))
    local seconds=$(( ms / 1000 )).$(printf %03d $(( ms % 1000 )))
    local launched_at=$(( start / 1000000000 )).$(printf %09d $(( start % 1000000000 )))  # Unix time
    printf '{"outcome": "%s", "seconds": %s, "launched_at": %s}\n' "$outcome" "$seconds" "$launched_at" \
        > "$work/steps/$name.json"
    say "$name: $outcome, $seconds s"
}

# keep_output NAME FILE: what step NAME printed, and its outcome, as OUT_DIR/FILE.
keep_output() {
    { cat "$work/steps/$1.txt" 2> /dev/null; echo "outcome: $(cat "$work/steps/$1.json")"; } > "$out/$2"
}

# The commit, and how many files of the tree differ from it: a copied tree may carry older git metadata.
changed=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)
say "gpu_check: $($smoke && echo "--smoke, on the CPU" || echo "on the GPU"), budget ${budget} s," \
    "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) ($changed tracked files differ)," \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
python3 -c 'from importlib.metadata import version
print(", ".join(f"{name} {version(name)}" for name in ("torch", "torchvision", "accelerate", "torchmetrics")))' \
    2>&1 | tee -a "$log"
if ! $smoke && ! python3 -c 'import sys, torch
print(f"CUDA {torch.version.cuda}, usable: {torch.cuda.is_available()}")
sys.exit(not torch.cuda.is_available())' 2>&1 | tee -a "$log"; then
    say "error: no usable CUDA GPU; bash benchmarks/gpu_check.sh DATA_DIR OUT_DIR --smoke is the CPU dry run"
    exit 1
fi
# A writable copy: torchvision extracts the archives beside themselves.
cp -r "$data/MNIST/raw" "$work/data/MNIST/" && chmod -R u+w "$work/data" || { say "error: cannot copy $data/MNIST/raw"; exit 1; }

if command -v nvidia-smi > /dev/null; then
    run_step gpu "$gpu_budget" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    keep_output gpu gpu.txt
else
    echo "no nvidia-smi: no NVIDIA driver$($smoke && echo " (--smoke runs on the CPU)")" | tee "$out/gpu.txt" >> "$log"
fi

# README's one-GPU command, tracking off; python3 -m accelerate.commands.launch is `accelerate launch` without
# relying on the entry point being on PATH.
for seed in "${seeds[@]}"; do
    run=$work/runs/seed_$seed
    run_step "train_seed_$seed" "$train_budget" python3 -m accelerate.commands.launch \
        --config_file accelerate_config.yaml train.py \
        --data_dir "$work/data" --output_dir "$run" --report_to none --seed "$seed" "${size_flags[@]}"
    run_step "evaluate_seed_$seed" "$evaluate_budget" python3 evaluate.py --ckpt "$run/best.pt" \
        --data_dir "$work/data" --json
done

# The record's command again with the training step launched kernel by kernel: its wall time and accuracy
# beside the CUDA-graph runs' (seeds 1 and 2 are the fair comparison: the first run also warms the disk cache).
eager_run=eager_seed_${seeds[0]}
run_step "train_$eager_run" "$train_budget" python3 -m accelerate.commands.launch \
    --config_file accelerate_config.yaml train.py --data_dir "$work/data" --output_dir "$work/runs/$eager_run" \
    --report_to none --seed "${seeds[0]}" --no_cuda_graph "${size_flags[@]}"
run_step "evaluate_$eager_run" "$evaluate_budget" python3 evaluate.py --ckpt "$work/runs/$eager_run/best.pt" \
    --data_dir "$work/data" --json

run_step benchmark "$benchmark_budget" python3 benchmarks/throughput.py --device "$device" \
    --data_dir "$work/data" --json "$out/benchmark_gpu.json" "${size_flags[@]}"

# -o addopts=: the GPU machine may lack pytest-xdist, which pyproject.toml's options ask for.
run_step cuda_tests "$cuda_tests_budget" python3 -m pytest -q -p no:cacheprovider -o addopts= tests/test_cuda.py
keep_output cuda_tests cuda_tests.txt

# The record's best.pt evaluated by two processes sharing the one GPU (benchmarks/share_gpu.py says what that
# takes); the summary compares their counts with the one-process evaluation's. On the CPU (--smoke) the two
# processes form their group as any CPU launch does, with no help.
share_gpu=(benchmarks/share_gpu.py)
$smoke && share_gpu=()
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run_step two_processes "$two_processes_budget" python3 -m accelerate.commands.launch --multi_gpu \
    --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no --main_process_port "$port" \
    "${share_gpu[@]}" evaluate.py --ckpt "$work/runs/seed_${seeds[0]}/best.pt" --data_dir "$work/data" --json

# Where a step's time goes (the default's step: bf16, as the shipped config), then the eager step against the
# CUDA graph and torch.compile: the leads for making the default faster.
run_step profile "$profile_budget" python3 benchmarks/profile_step.py --data_dir "$work/data" --mixed_precision bf16 \
    "${profile_flags[@]}" "${size_flags[@]}"
run_step benchmark_compile "$compile_budget" python3 benchmarks/throughput.py --device "$device" \
    --data_dir "$work/data" --pipelines bf16 bf16+graph bf16+compile bf16+cudagraphs --compile_backend "$compile_backend" \
    --json "$out/benchmark_compile.json" "${size_flags[@]}"

record=$work/runs/seed_${seeds[0]}
members=()
[[ -d $record/logs ]] && members+=(logs)
[[ -f $record/best.pt ]] && members+=(best.pt)
tar -cf "$out/record.tar" -C "$record" --exclude wandb -T /dev/null "${members[@]}" 2>&1 | tee -a "$log"
python3 benchmarks/gpu_check_summary.py "$work" "$out" "${seeds[@]}" 2>&1 | tee -a "$log"
say "gpu_check: finished; $out holds:"
ls -l "$out" | tee -a "$log"
! grep -q -E '"outcome": "(failed|timed out)' "$work"/steps/*.json
