"""Run one of the project's scripts with all its launched processes on the first GPU, as if there were several.

    accelerate launch --multi_gpu --num_processes 2 benchmarks/share_gpu.py evaluate.py --ckpt best.pt

Two things stop accelerate from putting two processes on one GPU, and both are settled here before the
script makes its Accelerator, so that the script itself runs unchanged:
- it joins the processes with NCCL, which refuses two ranks on the same device. Accelerate keeps a process
  group it finds already made, so one is made here with gloo (which moves CUDA tensors through the host:
  slower, and fine for a check);
- it puts each process on cuda:LOCAL_RANK, and its barriers allocate on that device, which must exist. Every
  process is told it is local rank 0; the global ranks, which shard the work, stay as the launcher set them.
This is for checking, on a machine with a single GPU, that a sharded run adds up to the numbers of one
process; it is not a way to train faster.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch.distributed as dist


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("error: name the script to run, e.g. benchmarks/share_gpu.py evaluate.py --ckpt best.pt")
    script, *args = sys.argv[1:]
    dist.init_process_group("gloo")  # rank, world size and address come from the launcher's environment
    os.environ["LOCAL_RANK"] = "0"
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # the script's imports resolve as if it were run itself
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        if dist.is_initialized():  # the group made here, if the script left it: gloo aborts on a live one
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
