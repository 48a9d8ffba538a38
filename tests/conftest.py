"""Shared fixtures: tiny MNIST-format data sets written as real IDX files, so the real loading code runs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import MNIST

from adder.config import parse_config
from adder.model import AdderNet

ROOT = Path(__file__).resolve().parent.parent
# The real MNIST, for the tests that need it: in the folder MNIST_ADDER_DATA names, or in ./data where
# README.md tells users to put it (each holding MNIST/raw/).
REAL_MNIST_DIRS = [Path(os.environ["MNIST_ADDER_DATA"])] if "MNIST_ADDER_DATA" in os.environ else [ROOT / "data"]
TINY_MODEL = ["--widths", "4,4", "8,8", "8", "--sum_hidden", "16"]  # a network that trains in seconds, as flags
# A full disk, for one file: a link to Linux's /dev/full, where every write fails with "No space left on
# device". Where there is none, the link would only create a file in /dev.
needs_dev_full = pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full (Linux)")


def pytest_configure(config):
    """Under pytest-xdist, each worker and every process it starts keep to one core of their own. The CLI runs
    take every core they are given (adder/hardware.py): two workers' runs would each start a thread per core
    and spend their time waiting on each other's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if worker and hasattr(os, "sched_setaffinity"):
        cores, index = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw"))
        if index < len(cores):  # more workers than cores (-n 3 on two): the others stay unpinned
            os.sched_setaffinity(0, {cores[index]})


# The modules whose runs take longest, which start first, so that no worker is left alone with one at the end.
LONGEST_FIRST = ["test_train_e2e.py", "test_launch.py", "test_real_mnist.py", "test_gpu_check.py"]


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


def tiny_net(**config) -> AdderNet:
    """TINY_MODEL's network (with `config`'s changes), built in the test's own process."""
    return AdderNet(replace(parse_config(TINY_MODEL).model_config, **config))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST uses (magic 0x0000080N, big-endian dimensions)."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images as bright as the digit is large: a task a tiny model learns in a few dozen steps."""
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 16, (n, 28, 28)) + 24 * labels[:, None, None]
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


def make_mnist_dir(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """root/MNIST/raw/ with the four uncompressed IDX files torchvision reads."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = synthetic_digits(n, rng)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="package")
def tiny_mnist(tmp_path_factory) -> Path:
    """600 training and 51 test images (an odd count, so no even split between processes)."""
    return make_mnist_dir(tmp_path_factory.mktemp("tiny_mnist"), n_train=600, n_test=51)


@pytest.fixture(scope="package")
def real_mnist(tmp_path_factory) -> Path:
    """A writable copy of the four real MNIST archives (torchvision extracts them beside themselves). Without
    all four the tests are skipped: with any missing, torchvision would download MNIST."""
    archives = [archive for archive, _ in MNIST.resources]
    raw = next((d / "MNIST" / "raw" for d in REAL_MNIST_DIRS
                if all((d / "MNIST" / "raw" / archive).is_file() for archive in archives)), None)
    if raw is None:
        pytest.skip(f"the four MNIST archives are not all in {REAL_MNIST_DIRS[0] / 'MNIST' / 'raw'} "
                    f"(set MNIST_ADDER_DATA)")
    copy = tmp_path_factory.mktemp("real_mnist") / "MNIST" / "raw"
    copy.mkdir(parents=True)
    for archive in archives:  # copyfile: the bytes without the permissions, which may be read-only
        shutil.copyfile(raw / archive, copy / archive)
    return copy.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], processes: int = 1, timeout: int = 300, check: bool = True, env: dict | None = None,
            popen: bool = False, machines: list[str] | None = None):
    """Run a script of the project as a user would: python, or `accelerate launch` with 2+ CPU processes, on
    this machine or, given the launcher's `machines` options (--num_machines ...), as one of several nodes."""
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        # --multi_gpu on a CPU-only machine starts real gloo ranks; --cpu would start only one process.
        machines = machines or ["--num_machines", "1", "--main_process_port", str(free_port())]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--mixed_precision", "no", "--dynamo_backend", "no", *machines, *args]
    full_env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
                             "PYTHONUNBUFFERED": "1"} | (env or {})
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


# The tiny end-to-end runs: a tiny model on tiny data, on the CPU.
FAST = ["--val_size", "100", "--batch_size", "32", "--log_every", "5", "--report_to", "none", *TINY_MODEL,
        "--ema_decay", "0.9",  # the EMA on, so that resuming with 2 processes covers its state
        # A recipe that learns the tiny task in these runs' few dozen steps: SGD, and label smoothing (which
        # holds back early confidence), need more.
        "--optimizer", "adamw", "--lr", "0.03", "--label_smoothing", "0"]


# What a machine without a usable GPU looks like, even on one that has a GPU.
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def epochs_trained(stdout: str) -> list[int]:
    """The epochs a run trained, from its console's epoch lines."""
    return [int(epoch) for epoch in re.findall(r"^epoch +(\d+)/", stdout, re.MULTILINE)]


def train(data_dir, out_dir, *extra, processes=1, **kwargs):
    return run_cli(["train.py", "--data_dir", str(data_dir), "--output_dir", str(out_dir), "--cpu", *FAST, *extra],
                   processes=processes, **kwargs)


class CreatesFileWhenUnpickled:
    """A pickle payload that would create a file when loaded: what a malicious checkpoint could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
