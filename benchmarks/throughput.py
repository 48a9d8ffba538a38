"""Throughput: the classic DataLoader pipeline against the project's device-resident one, same model, same run.

    python benchmarks/throughput.py --device cuda --data_dir data
    python benchmarks/throughput.py --device cpu --data_dir data
    python benchmarks/throughput.py --device cpu --epochs 2 --widths 4,4 8,8 8   # a smaller model in both

Any further flag is train.py's (adder/config.py's TrainConfig); without any, both pipelines use its defaults.

(a) classic: torchvision MNIST, per-sample ToTensor + Normalize, a random addend per sample, DataLoader with
    batch 128 and 4 workers, fp32; a plain training loop.
(b) project: train.py itself (its real loop, via train.main), by default: the split held on the device,
    batch 512, on-device augmentation, channels_last; once in fp32 and once with bf16 autocast (the shipped
    accelerate config's setting).
Both run in this one process on the same device. Seconds per epoch are for the training pass only
(train.py's validation is excluded); images/s normalise the different epoch sizes (60,000 vs 55,000 images).
This is a benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets import MNIST

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from adder.config import TrainConfig, parse_config  # noqa: E402
from adder.data import MNIST_MEAN, MNIST_STD  # noqa: E402
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


def project_epochs(train_flags: list[str], config: TrainConfig, device: torch.device, precision: str, images: int):
    """train.py's seconds per training pass, and the images each pass sees (the held-out ones excluded)."""
    with tempfile.TemporaryDirectory() as out:
        argv = [*train_flags, "--data_dir", config.data_dir, "--output_dir", out, "--epochs", str(config.epochs),
                "--report_to", "none", "--mixed_precision", precision] + (["--cpu"] if device.type == "cpu" else [])
        if train.main(argv) != 0:
            sys.exit("error: train.py failed")
        # Accelerate keeps its state per process; forget it so that the next run may use another precision.
        AcceleratorState._reset_state(reset_partial_state=True)
        rows = [json.loads(line) for line in (Path(out) / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [row["train_seconds"] for row in rows], images - config.val_size


def summary(name: str, seconds: list[float], images: int) -> dict:
    steady = sum(seconds[1:]) / len(seconds[1:])
    return {"pipeline": name, "first_s": seconds[0], "steady_s": steady, "images_per_s": images / steady}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data_dir", default=TrainConfig.data_dir)
    p.add_argument("--epochs", type=int, default=3, help="epochs per pipeline; the first counts as warm-up")
    p.add_argument("--json", type=Path, help="also write the table as JSON here")
    args, train_flags = p.parse_known_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (one warm-up, one steady)")
    # train.py's own parser checks the flags meant for it, and gives the settings both pipelines share.
    config = parse_config([*train_flags, "--data_dir", args.data_dir, "--epochs", str(args.epochs)])
    device = torch.device(args.device)
    classic_seconds, images = classic_epochs(config.data_dir, config.model_config, device, config.epochs)
    classic = summary("classic DataLoader, fp32, batch 128", classic_seconds, images)
    project_fp32 = summary("project (train.py), fp32",
                           *project_epochs(train_flags, config, device, "no", images))
    project = summary("project (train.py), bf16 autocast",
                      *project_epochs(train_flags, config, device, "bf16", images))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ndevice: {name}, torch {torch.__version__}, {config.epochs} epochs each\n")
    print("| pipeline | first epoch s | steady epoch s | images/s |")
    print("|---|---|---|---|")
    for row in (classic, project_fp32, project):
        print(f"| {row['pipeline']} | {row['first_s']:.2f} | {row['steady_s']:.2f} | {row['images_per_s']:,.0f} |")
    ratios = {row["pipeline"]: row["images_per_s"] / classic["images_per_s"] for row in (project_fp32, project)}
    for pipeline, ratio in ratios.items():
        print(f"{pipeline} / classic throughput: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "epochs": config.epochs,
                                         "train_flags": train_flags, "rows": [classic, project_fp32, project],
                                         "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
