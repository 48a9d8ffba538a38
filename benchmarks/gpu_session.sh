#!/usr/bin/env bash
# The whole GPU check in one go, for a machine with a CUDA GPU (and, where wandb is missing, tracking off):
# CUDA tests, the throughput benchmark, and the default training run with seeds 42 (the record that makes
# training_logs/), 1 and 2 (the three-seed table), each checked with evaluate.py.
#   bash benchmarks/gpu_session.sh DATA_DIR OUT_DIR
# DATA_DIR holds MNIST/raw/ (writable); OUT_DIR receives the logs to commit.
set -euo pipefail
data=${1:?data dir}; out=${2:?output dir}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.txt"
python benchmarks/throughput.py --device cuda --data_dir "$data" --json "$out/benchmark_gpu.json" 2>&1 \
    | grep -v "it/s" | tail -12 | tee "$out/benchmark_gpu.txt"
for seed in 42 1 2; do
    run="$out/seed_$seed"
    start=$(date +%s)
    accelerate launch --config_file accelerate_config.yaml train.py --data_dir "$data" --output_dir "$run" \
        --report_to none --seed "$seed" 2>&1 | grep -v "it/s" > "$run.txt"
    echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$run.txt"
    python evaluate.py --ckpt "$run/best.pt" --data_dir "$data" | tee "$run.evaluate.txt"
done
