"""Learning-rate range test: raise the learning rate exponentially over a few hundred training steps and
watch the loss (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017).

    python -m adder.lr_find --data_dir data [--optimizer sgd|adamw] [--output_dir .] [--cpu]

Trains a fresh default model with the same data, augmentation, loss and optimiser as train.py, writes
logs/lr_find.png and logs/lr_find.json, and prints the suggested peak learning rate for --lr: the rate
where the smoothed loss falls fastest. train.py's one-cycle schedule peaks at --lr.

Written here rather than taken from torch-lr-finder, which wants (input, label) batches from a DataLoader:
this model takes two inputs, and its batches come from device tensors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from adder.config import OPTIMIZERS, TrainConfig  # noqa: E402
from adder.data import DataError, DeviceMNIST, load_mnist, split_train_val, train_batches  # noqa: E402
from adder.files import atomic_write_text  # noqa: E402
from adder.loss import AdderLoss  # noqa: E402
from adder.model import AdderNet  # noqa: E402
from adder.optim import build_optimizer  # noqa: E402
from adder.plots import save_figures  # noqa: E402
from adder.step import ForwardBackward  # noqa: E402


def lr_range_test(model, data: DeviceMNIST, config: TrainConfig, *, start_lr=1e-5, end_lr=1.0, steps=300,
                  smoothing=0.9) -> tuple[list[float], list[float]]:
    """(learning rates, smoothed losses), stopped early once the loss has clearly diverged.

    Everything but the learning rate is train.py's: `config`'s optimiser, weight decay, batch size, seed,
    augmentation and loss.
    """
    optimizer = build_optimizer(config.optimizer, model.parameters(), start_lr, config.weight_decay)
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    loss_fn = AdderLoss(sum_weight=config.sum_weight, label_smoothing=config.label_smoothing)
    forward_backward = ForwardBackward(model, loss_fn, data, torch.Tensor.backward, seed=config.seed,
                                       augment=config.augment, cuda_graph=False)
    lrs, losses, smoothed, best = [], [], 0.0, math.inf
    epoch = 0
    while len(lrs) < steps:
        epoch += 1
        for index in train_batches(len(data), config.batch_size, config.seed, epoch, rank=0, world_size=1,
                                   device=data.device):
            loss = forward_backward(index, epoch)
            optimizer.step()
            smoothed = smoothing * smoothed + (1 - smoothing) * loss.item()
            value = smoothed / (1 - smoothing ** (len(lrs) + 1))  # bias-corrected running mean
            lrs.append(scheduler.get_last_lr()[0])
            losses.append(value)
            scheduler.step()
            best = min(best, value)
            if len(lrs) >= steps or not math.isfinite(value) or value > 4 * best:
                return lrs, losses
    return lrs, losses


# suggest() leaves out the first tenth and the last twentieth of the sweep: it needs a few points between.
MIN_STEPS = 10


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The rate of steepest descent of the smoothed loss against log(lr), ignoring the noisy ends."""
    lo, hi = len(lrs) // 10, max(len(lrs) // 10 + 2, len(lrs) - len(lrs) // 20)
    slopes = [(losses[i + 1] - losses[i]) / math.log(lrs[i + 1] / lrs[i]) for i in range(lo, hi - 1)]
    return lrs[lo + min(range(len(slopes)), key=slopes.__getitem__)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=TrainConfig.data_dir, help="folder holding MNIST/raw/")
    p.add_argument("--output_dir", type=Path, default=Path("."), help="the plot goes to OUTPUT_DIR/logs/")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=TrainConfig.optimizer,
                   help="the optimiser train.py will use")
    p.add_argument("--steps", type=int, default=300, help="training steps of the sweep")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    args = p.parse_args(argv)
    if args.steps < MIN_STEPS:
        p.error(f"--steps: at least {MIN_STEPS}, got {args.steps}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    config = TrainConfig(optimizer=args.optimizer)
    torch.manual_seed(config.seed)
    try:
        (images, labels), _ = split_train_val(*load_mnist(args.data_dir, train=True), val_size=config.val_size)
    except DataError as err:
        sys.exit(f"error: {err}")
    model = AdderNet(config.model_config).to(device, memory_format=torch.channels_last)
    lrs, losses = lr_range_test(model, DeviceMNIST(images, labels, device), config, steps=args.steps)
    if len(lrs) < MIN_STEPS:
        sys.exit(f"error: the loss diverged after {len(lrs)} steps, at learning rate {lrs[-1]:.2g}: too few "
                 f"points to suggest a rate")
    suggested = suggest(lrs, losses)

    logs = args.output_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses)
    ax.axvline(suggested, color="tab:red", linestyle="--", label=f"steepest descent: {suggested:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)",
           title=f"learning-rate range test, {len(lrs)} steps, {args.optimizer}")
    ax.set_ylim(top=min(max(losses), 3 * losses[0]))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figures({"lr_find": fig}, logs)
    atomic_write_text(logs / "lr_find.json", json.dumps({"suggested_lr": suggested, "lrs": lrs, "losses": losses}))
    print(f"suggested learning rate for --optimizer {args.optimizer}: {suggested:.3g} (plot: {logs / 'lr_find.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
