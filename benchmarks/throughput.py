"""Throughput: the classic DataLoader pipeline against the project's device-resident one, same model, same run.

    python benchmarks/throughput.py --device cuda --data_dir data
    python benchmarks/throughput.py --device cpu --data_dir data
    python benchmarks/throughput.py --device cpu --epochs 2 --widths 4,4 8,8 8   # a smaller model in both
    python benchmarks/throughput.py --device cuda --data_dir data --pipelines bf16 bf16+graph bf16+compile

Any further flag is train.py's (adder/config.py's TrainConfig); without any, every pipeline uses its defaults.

--pipelines (default: classic fp32 bf16 on a CPU; classic bf16 bf16+graph+autotune on a GPU), each run in turn in this
process on the same device (but one, below):
    classic          torchvision MNIST, per-sample ToTensor + Normalize, a random addend per sample, DataLoader
                     with batch 128 and 4 workers, fp32; a plain training loop
    fp32, bf16       train.py itself (its real loop, via train.main) with its step launched kernel by kernel
                     (--no_cuda_graph): the split held on the device, batch 512, on-device augmentation,
                     channels_last; without autocast, and with bf16 autocast (the shipped accelerate config's)
    bf16+graph       bf16, the whole step (batch, forward, backward) replayed from one CUDA graph
                     (adder/step.py); on the CPU the same as bf16
    fp32+graph       the same without autocast: a graph replays the step's kernels at no launch cost, which
                     leaves their own time, and autocast's casts are kernels too
    bf16+graph+autotune  bf16+graph with torch.backends.cudnn.benchmark on: cuDNN times its algorithms for each
                     convolution's shape at the first steps and keeps the fastest (the graph then replays those):
                     train.py's default on a CUDA GPU; every other pipeline runs with --no_cudnn_benchmark;
                     run in a process of its own unless it is the only pipeline, since cuDNN keeps the algorithm
                     it chose for a shape for the life of the process, whatever cudnn.benchmark says later
    bf16+compile     bf16, the model through torch.compile, as `accelerate launch --dynamo_backend inductor`
    fp32+compile     the same without autocast (a CPU without native bf16)
    bf16+cudagraphs  the same in torch.compile's "reduce-overhead" mode (CUDA graphs; as --dynamo_mode
                     reduce-overhead), which replays each step's kernels without launching them one by one;
                     its row's cudagraph_skips counts the graphs inductor could not capture
The first pipeline listed is the one the others are compared with. --compile_backend eager traces the model
without generating code, to try the compiled pipelines' plumbing in seconds.
Seconds per epoch are for the training pass only (train.py's validation is excluded); the first epoch pays
for start-up and compilation, the others are the steady pace; images/s normalise the different epoch sizes
(60,000 vs 55,000 images). With --json, the table is rewritten after each pipeline, so a run cut short keeps
what it measured; a pipeline that fails is recorded with its error and the rest still run.
This is a benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from unittest import mock

import torch
from accelerate.state import AcceleratorState
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import MNIST

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from adder.files import atomic_write_text  # noqa: E402
from adder.config import TrainConfig, parse_config  # noqa: E402
from adder.data import MNIST_MEAN, MNIST_STD, DataError, load_mnist  # noqa: E402
from adder.hardware import cpu_name  # noqa: E402
from adder.loss import AdderLoss  # noqa: E402
from adder.model import AdderNet, ModelConfig  # noqa: E402


class ClassicPairs(Dataset):
    """The textbook way: one PIL image at a time through the transforms, a fresh random addend each time."""

    def __init__(self, data_dir: str):
        self.mnist = MNIST(data_dir, train=True, download=True, transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]))

    def __len__(self):
        return len(self.mnist)

    def __getitem__(self, index):
        image, digit = self.mnist[index]
        addend = random.randint(0, 9)
        return image, addend, digit


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def classic_epochs(data_dir: str, model_config: ModelConfig, device: torch.device,
                   epochs: int) -> tuple[list[float], int]:
    dataset = ClassicPairs(data_dir)
    loader = DataLoader(dataset, batch_size=128, shuffle=True, num_workers=4, persistent_workers=True,
                        pin_memory=device.type == "cuda")
    model = AdderNet(model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = AdderLoss()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, addends, digits in loader:
            images, addends, digits = images.to(device), addends.to(device), digits.to(device)
            digit_logits, sum_logits = model(images, addends)
            loss = loss_fn(digit_logits, sum_logits, digits, digits + addends)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds, len(dataset)


def project_epochs(train_flags: list[str], config: TrainConfig, device: torch.device, precision: str,
                   compile_mode: str | None = None, compile_backend: str = "inductor") -> tuple[list[float], dict]:
    """train.py's seconds per training pass, and for a compiled run how often inductor fell back from CUDA
    graphs. With compile_mode, the model goes through
    torch.compile as `accelerate launch --dynamo_backend ... --dynamo_mode ...` asks for it; every other
    dynamo setting is the launcher's default, whatever this process's environment says."""
    dynamo = {"ACCELERATE_DYNAMO_BACKEND": compile_backend.upper() if compile_mode else "NO",
              "ACCELERATE_DYNAMO_MODE": compile_mode or "default", "ACCELERATE_DYNAMO_USE_FULLGRAPH": "false",
              "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION": "false"}
    notes = {}
    cudnn = torch.backends.cudnn
    with (tempfile.TemporaryDirectory() as out, mock.patch.dict(os.environ, dynamo),
          cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                      allow_tf32=cudnn.allow_tf32)):  # restored after train.py sets cudnn.benchmark
        os.environ.pop("ACCELERATE_DYNAMO_USE_DYNAMIC", None)  # restored on leaving the block
        argv = [*train_flags, "--data_dir", config.data_dir, "--output_dir", out, "--epochs", str(config.epochs),
                "--report_to", "none", "--mixed_precision", precision] + (["--cpu"] if device.type == "cpu" else [])
        try:
            if train.main(argv) != 0:
                raise RuntimeError("train.py failed (its error is above)")
            if compile_mode == "reduce-overhead":
                # Inductor runs a graph without CUDA graphs when it cannot capture it, and only says so in a log.
                notes["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
        finally:
            # Accelerate keeps its state per process, torch.compile its caches: forget both before the next run.
            AcceleratorState._reset_state(reset_partial_state=True)
            torch.compiler.reset()
            counters.clear()
        rows = [json.loads(line) for line in (Path(out) / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [row["train_seconds"] for row in rows], notes


def row_in_own_process(pipeline: str, args: argparse.Namespace, train_flags: list[str]) -> dict:
    """One pipeline's row (its error, if it failed), measured by this script in a new process."""
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table.json"
        result = subprocess.run([sys.executable, __file__, "--device", args.device, "--data_dir", args.data_dir,
                                 "--epochs", str(args.epochs), "--pipelines", pipeline, "--json", str(table),
                                 *train_flags])
        if not table.exists():
            raise RuntimeError(f"the process measuring {pipeline} exited {result.returncode} without a table")
        return json.loads(table.read_text())["rows"][0]


def summary(name: str, seconds: list[float], images: int, notes: dict | None = None) -> dict:
    steady = sum(seconds[1:]) / len(seconds[1:])
    return {"pipeline": name, "first_s": seconds[0], "steady_s": steady, "images_per_s": images / steady} | (notes or {})


# name: (what the table calls it, train.py's --mixed_precision, torch.compile mode, further train.py flags,
# whether cuDNN times its algorithms for each shape and keeps the fastest); classic is its own loop.
PIPELINES = {
    "classic": ("classic DataLoader, fp32, batch 128", None, None, [], False),
    "fp32": ("project (train.py), fp32, eager step", "no", None, ["--no_cuda_graph"], False),
    "bf16": ("project (train.py), bf16 autocast, eager step", "bf16", None, ["--no_cuda_graph"], False),
    "bf16+graph": ("project (train.py), bf16, CUDA-graph step", "bf16", None, [], False),
    "fp32+graph": ("project (train.py), fp32, CUDA-graph step", "no", None, [], False),
    "bf16+graph+autotune": ("project (train.py), bf16, CUDA-graph step, cudnn.benchmark (the GPU default)", "bf16",
                            None, [], True),
    "bf16+compile": ("project (train.py), bf16, torch.compile", "bf16", "default", [], False),
    "fp32+compile": ("project (train.py), fp32, torch.compile", "no", "default", [], False),
    "bf16+cudagraphs": ("project (train.py), bf16, torch.compile reduce-overhead", "bf16", "reduce-overhead", [], False),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # train.py's flags pass through whole
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data_dir", default=TrainConfig.data_dir)
    p.add_argument("--epochs", type=int, default=3, help="epochs per pipeline; the first counts as warm-up")
    p.add_argument("--pipelines", nargs="+", choices=list(PIPELINES),
                   help="what to run, in this order; the first is the baseline (default: see above)")
    p.add_argument("--compile_backend", choices=["inductor", "eager"], default="inductor",
                   help="torch.compile's backend for the compiled pipelines")
    p.add_argument("--json", type=Path, help="also write the table as JSON here")
    args, train_flags = p.parse_known_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (one warm-up, one steady)")
    # train.py's own parser checks the flags meant for it, and gives the settings the pipelines share.
    config = parse_config([*train_flags, "--data_dir", args.data_dir, "--epochs", str(args.epochs)])
    device = torch.device(args.device)
    if args.pipelines is None:
        args.pipelines = (["classic", "bf16", "bf16+graph+autotune"] if device.type == "cuda"
                          else ["classic", "fp32", "bf16"])
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({cpu_name()}), {torch.get_num_threads()} threads")

    try:
        project_images = len(load_mnist(config.data_dir, train=True)[1]) - config.val_size  # held-out ones excluded
    except DataError as err:
        sys.exit(f"error: {err}")
    rows = []
    for pipeline in args.pipelines:
        label, precision, compile_mode, flags, autotune = PIPELINES[pipeline]
        try:
            if pipeline == "classic":
                rows.append(summary(label, *classic_epochs(config.data_dir, config.model_config, device, config.epochs)))
            elif autotune and len(args.pipelines) > 1:
                rows.append(row_in_own_process(pipeline, args, train_flags))
            else:
                heuristics = [] if autotune else ["--no_cudnn_benchmark"]
                seconds, notes = project_epochs([*train_flags, *flags, *heuristics], config, device, precision,
                                                compile_mode, args.compile_backend)
                rows.append(summary(label, seconds, project_images, notes))
        except Exception as err:  # noqa: BLE001 - a benchmark records what failed and measures the rest
            traceback.print_exc()
            rows.append({"pipeline": label, "error": f"{type(err).__name__}: {err}".splitlines()[0][:500]})
        measured = [row for row in rows if "error" not in row]
        baseline = measured[0] if measured and measured[0] is rows[0] else None
        ratios = {row["pipeline"]: row["images_per_s"] / baseline["images_per_s"]
                  for row in measured[1:]} if baseline else {}
        if args.json:
            table = {"device": name, "torch": torch.__version__, "epochs": config.epochs, "train_flags": train_flags,
                     "compile_backend": args.compile_backend, "rows": rows, "baseline": rows[0]["pipeline"],
                     "ratios": ratios}
            atomic_write_text(args.json, json.dumps(table, indent=2))  # a cut run leaves the last whole table

    print(f"\ndevice: {name}, torch {torch.__version__}, {config.epochs} epochs each\n")
    print("| pipeline | first epoch s | steady epoch s | images/s |")
    print("|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['pipeline']} | failed: {row['error']} | | |")
        else:
            print(f"| {row['pipeline']} | {row['first_s']:.2f} | {row['steady_s']:.2f} | {row['images_per_s']:,.0f} |")
    for pipeline, ratio in ratios.items():
        print(f"{pipeline} / {rows[0]['pipeline']} throughput: {ratio:.2f}x")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
