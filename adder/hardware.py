"""Where a run executes: the GPU when one is usable, otherwise the CPU with the settings that are fast there.

Accelerate only runs on the CPU when told to (`cpu=True`): on a machine with no usable GPU, N processes
launched without it would each believe they run alone and train the whole data set side by side. So the
CPU is chosen here, before the Accelerator is made, whenever no GPU is usable.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import get_cpu_distributed_information


def gpu_usable() -> bool:
    """A CUDA GPU that PyTorch can use: False with no GPU, a broken driver or CUDA_VISIBLE_DEVICES="".

    Apple's MPS does not count: it has no float64, which the augmentation's random draws and the exact
    metrics use, so a Mac trains on its CPU."""
    return torch.cuda.is_available()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 itself (x86 avx512_bf16 or AMX, Arm's bf16 feature).

    Without it PyTorch emulates bf16, and autocast trains this model several times slower than fp32
    (docs/experiments.md, Speed). Where /proc/cpuinfo cannot be read, the safe answer is no.
    """
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", cpuinfo) is not None


def cpu_name() -> str:
    """The CPU's model, as /proc/cpuinfo names it (Linux), else what the platform module knows."""
    match = re.search(r"^model name\s*:\s*(.+)$", read_cpuinfo(), re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown CPU"


def read_cpuinfo() -> str:
    """Linux's /proc/cpuinfo; empty where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, as taskset or a container sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class PlacementError(ValueError):
    """A requested setting the chosen device cannot run."""


@dataclass
class Placement:
    """What the run uses: the arguments for Accelerator, and for the CPU its threads and a line to say why."""

    cpu: bool
    mixed_precision: str | None  # None: whatever the accelerate config or launcher says (GPU only)
    threads: int | None = None  # CPU threads per process
    note: str = ""  # one line: what was chosen on the CPU and why
    warning: str = ""  # set when an explicit choice will be slow


def choose_placement(force_cpu: bool, mixed_precision: str | None, *, gpu: bool, native_bf16: bool,
                     cores: int, local_processes: int) -> Placement:
    """The GPU if there is one and the CPU was not asked for; on the CPU, bf16 only where it is native and
    every core shared among this machine's processes. An explicit `mixed_precision` is obeyed, or refused
    (PlacementError) where it cannot be: fp16 on the CPU, where accelerate would train in fp32 instead."""
    if gpu and not force_cpu:
        return Placement(cpu=False, mixed_precision=mixed_precision)
    why = "--cpu" if force_cpu else "no usable CUDA GPU"
    if mixed_precision == "fp16":
        raise PlacementError(f"--mixed_precision fp16 needs a CUDA GPU, and this run is on the CPU ({why}): "
                             f"leave --mixed_precision out for the CPU's fast choice, or give --mixed_precision no")
    threads = max(1, cores // max(1, local_processes))
    explicit = mixed_precision is not None
    if not explicit:
        mixed_precision = "bf16" if native_bf16 else "no"
    reason = "--mixed_precision" if explicit else f"this CPU has {'' if native_bf16 else 'no '}native bf16"
    precision = "fp32" if mixed_precision == "no" else mixed_precision
    note = f"CPU ({why}): {threads} thread{'s' if threads > 1 else ''} per process, {precision} ({reason})"
    warning = ""
    if mixed_precision == "bf16" and not native_bf16:  # only an explicit choice gets here
        warning = ("--mixed_precision bf16 on a CPU without native bf16 is emulated and several times slower "
                   "than fp32; leave --mixed_precision out to get fp32 here")
    return Placement(True, mixed_precision, threads, note, warning)


def place_run(force_cpu: bool, mixed_precision: str | None) -> Placement:
    """choose_placement() for this machine and this launch (its processes on this machine, as torchrun or MPI
    says); sets the CPU threads when on the CPU."""
    local_processes = get_cpu_distributed_information().local_world_size
    placement = choose_placement(force_cpu, mixed_precision, gpu=gpu_usable(), native_bf16=cpu_has_native_bf16(),
                                 cores=cpu_cores(), local_processes=local_processes)
    if placement.threads:
        # accelerate's launcher sets OMP_NUM_THREADS=1 for GPU launches, which would leave cores idle here.
        torch.set_num_threads(placement.threads)
    return placement
