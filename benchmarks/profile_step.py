"""Where a training step's time goes: torch.profiler over train.py's own loop.

    python benchmarks/profile_step.py --data_dir data --mixed_precision bf16   # the default's step, as the
                                                                               # shipped config runs it
    python benchmarks/profile_step.py --data_dir data --steps 50 --batch_size 1024   # any train.py flag
    python benchmarks/profile_step.py --data_dir data --mixed_precision bf16 --no_cuda_graph --shapes

Runs train.py (train.main, tracking off) and profiles `--steps` optimiser steps of its second epoch, after
a whole epoch of warm-up (CUDA's lazy start, torch.compile's compilation, the allocator's first requests).
Prints, per step: wall time, the time the GPU spent in kernels, the gap between the two (time the GPU
waited for the host: launches, Python, synchronisations), kernels run and host synchronisations; then
the operations that took the most time. --shapes lists them by input shape as well, which tells which
layer a convolution kernel belongs to; a step replayed from a CUDA graph hides the operations behind its
kernels, so that needs --no_cuda_graph. On the CPU only the operation tables mean much. The profiler steps
from inside the optimiser's own profiling range, so CPU totals nest oddly at the window's ends; self
times are unaffected.

Times under the profiler include its own overhead: benchmarks/throughput.py gives the epoch times to quote.
This is a measurement, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from adder.config import parse_config  # noqa: E402
from adder.data import DataError, load_mnist, train_batches  # noqa: E402
from adder.hardware import cpu_name  # noqa: E402

# Host calls that wait for the GPU; each one stalls the queue of launches.
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # train.py's flags pass through whole
    p.add_argument("--steps", type=int, default=30, help="optimiser steps to profile")
    p.add_argument("--rows", type=int, default=15, help="operations to list")
    p.add_argument("--shapes", action="store_true", help="also list the operations by their input shapes")
    args, train_flags = p.parse_known_args()
    config = parse_config(train_flags)
    cuda = torch.cuda.is_available() and not config.cpu

    # One epoch of warm-up, then a few steps for the profiler's own; the profiled steps end before the
    # second epoch's validation. The epoch's steps are counted as train.py cuts them.
    try:
        images = len(load_mnist(config.data_dir, train=True)[1]) - config.val_size
    except DataError as err:
        sys.exit(f"error: {err}")
    steps_per_epoch = len(train_batches(images, config.batch_size, config.seed, 0, rank=0, world_size=1))
    warmup, epochs = 3, 2
    if steps_per_epoch <= warmup or not 0 < args.steps <= steps_per_epoch - warmup:
        p.error(f"--steps must be between 1 and an epoch's steps ({steps_per_epoch}) less {warmup}")
    first, last = steps_per_epoch + warmup, steps_per_epoch + warmup + args.steps  # optimiser steps done
    marks = {}

    def after_step(*_):
        # Called after every optimiser step of the run (a global hook: train.py stays as it is). The window's
        # ends are timed with the device drained, before the profiler starts or stops its trace.
        done = prof.step_num + 1
        if done in (first, last):
            if cuda:
                torch.cuda.synchronize()
            marks[done] = time.perf_counter()
        prof.step()

    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                 record_shapes=args.shapes, schedule=schedule(wait=steps_per_epoch, warmup=warmup, active=args.steps, repeat=1)) as prof:
        hook = register_optimizer_step_post_hook(after_step)
        try:
            with tempfile.TemporaryDirectory() as out:
                status = train.main([*train_flags, "--output_dir", out, "--epochs", str(epochs),
                                     "--report_to", "none"])
        finally:
            hook.remove()
    if status != 0:
        sys.exit("error: train.py failed")

    wall_ms = (marks[last] - marks[first]) / args.steps * 1e3
    events = prof.key_averages()
    # Kernels, copies and fills; not the device-side copies of record_function ranges (ProfilerStep#N,
    # Optimizer.step), which would count the kernels inside them a second time.
    device_events = [e for e in events if e.device_type == DeviceType.CUDA
                     and not getattr(e, "is_user_annotation", False)]
    kernel_ms = sum(e.self_device_time_total for e in device_events) / 1e3 / args.steps
    kernels = sum(e.count for e in device_events) / args.steps
    syncs = sum(e.count for e in events if e.key in SYNC_CALLS) / args.steps

    device = torch.cuda.get_device_name() if cuda else f"CPU ({cpu_name()}), {torch.get_num_threads()} threads"
    print(f"\nprofile: {device}, torch {torch.__version__}, {args.steps} steps of epoch 2, "
          f"flags: {' '.join(train_flags) or 'train.py defaults'}")
    print(f"per step: wall {wall_ms:.2f} ms", end="")
    if cuda:
        print(f", GPU in kernels {kernel_ms:.2f} ms ({kernel_ms / wall_ms:.0%} busy), gap {wall_ms - kernel_ms:.2f} ms,"
              f" {kernels:.0f} kernels (memcpy and memset included; eagerly, each its own launch; from a CUDA graph,"
              f" all from one), {syncs:.2f} host syncs")
    else:
        print(" (CPU: no device timeline; the table shows where the host time goes)")
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=60))
    if args.shapes:
        # Self times: every op records its inputs' shapes, the innermost one too (aten::cudnn_convolution,
        # aten::convolution_backward), which launches the kernels; totals would list each layer once per
        # nesting level (conv2d > convolution > _convolution > cudnn_convolution).
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by=sort_by, row_limit=args.rows, max_name_column_width=40,
            max_shapes_column_width=80))
    return 0


if __name__ == "__main__":
    sys.exit(main())
