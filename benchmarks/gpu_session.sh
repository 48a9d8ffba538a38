#!/usr/bin/env bash
# The whole GPU check in one go, for a machine with a CUDA GPU (and, where wandb is missing, tracking off):
# CUDA tests, the throughput benchmark, the full default training run that makes training_logs/, and the
# same run with seeds 1 and 2 for the three-seed table.
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
start=$(date +%s)
accelerate launch --config_file accelerate_config.yaml train.py --data_dir "$data" --output_dir "$out/run" \
    --report_to none 2>&1 | grep -v "it/s" > "$out/train_stdout.txt"
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$out/train_stdout.txt"
python evaluate.py --ckpt "$out/run/best.pt" --data_dir "$data" | tee "$out/evaluate.txt"
for seed in 1 2; do
    accelerate launch --config_file accelerate_config.yaml train.py --data_dir "$data" --output_dir "$out/seed_$seed" \
        --report_to none --seed "$seed" 2>&1 | grep -v "it/s" > "$out/train_stdout_seed_$seed.txt"
    grep "^test" "$out/train_stdout_seed_$seed.txt"
done
