"""Figures of a training run: curves, a grid of test predictions, the confusion matrices of both heads.

    python -m adder.plots RUN_DIR [--data_dir data] [--out DIR]

RUN_DIR is a train.py --output_dir (it holds best.pt and logs/metrics.jsonl); the PNG files go to --out
(default RUN_DIR/logs).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from adder.checkpoint import CheckpointError, load_model  # noqa: E402
from adder.config import TrainConfig  # noqa: E402
from adder.data import DataError, DeviceMNIST, load_mnist  # noqa: E402
from adder.evaluation import evaluate, one_addend_predictions  # noqa: E402
from adder.files import atomic_write, read_metrics  # noqa: E402


def curves_figure(epochs: list[dict]) -> plt.Figure:
    """Losses, validation error and inconsistency, learning rate, per epoch. Errors on a log scale (linear
    below 0.01 %, so that 0 shows): the first epochs' tens of percent and the last ones' tenths share the plot."""
    x = [e["epoch"] for e in epochs]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0, 0]
    ax.plot(x, [e["train_loss"] for e in epochs], label="train: the objective, label smoothing included")
    ax.plot(x, [e["val_loss"] for e in epochs], label="validation: plain cross-entropy")
    ax.set(title="loss (digit CE + sum CE): train's epoch mean, validation's", xlabel="epoch", yscale="log")
    ax = axes[0, 1]
    for key in ("digit_acc", "sum_acc", "joint_acc"):
        ax.plot(x, [100 * (1 - e[f"val_{key}"]) for e in epochs], label=key.replace("_acc", ""))
    ax.set(title="validation error, % (all 10 addends per image)", xlabel="epoch")
    ax = axes[1, 0]
    ax.plot(x, [100 * (1 - e["val_consistency"]) for e in epochs], color="tab:purple")
    ax.set(title="validation pairs with sum != digit + addend, %", xlabel="epoch")
    for ax in axes[0, 1], axes[1, 0]:
        ax.set_yscale("symlog", linthresh=0.01)
    ax = axes[1, 1]
    ax.plot(x, [e["lr"] for e in epochs], color="tab:green")
    ax.set(title="learning rate at the end of each epoch", xlabel="epoch")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig


def predictions_figure(answers: dict[str, torch.Tensor], test_set: DeviceMNIST, count: int = 32) -> plt.Figure:
    """Test images with a random addend each (`answers`: one_addend_predictions), the mistakes first
    (marked red), then right answers."""
    digits, addends, sums = answers["digit"], answers["addend"], answers["sum"]
    digit_pred, sum_pred = answers["predicted digit"], answers["predicted sum"]
    wrong = (digit_pred != digits) | (sum_pred != sums)
    order = torch.cat([wrong.nonzero().flatten(), (~wrong).nonzero().flatten()])[:count]
    images = test_set.images[order.to(test_set.device)].cpu().unsqueeze(1) / 255
    cols, gap = 8, 12  # the gap above each digit holds its caption
    # All the digits in one image (torchvision's make_grid): three times faster to draw than 32 small axes.
    canvas = make_grid(images, nrow=cols, padding=gap, pad_value=1)[0]
    width = cols * 1.6
    fig, ax = plt.subplots(figsize=(width, width * canvas.shape[0] / canvas.shape[1] + 0.6))  # + the title
    for k, i in enumerate(order.tolist()):
        top, left = (k // cols) * (28 + gap) + gap, (k % cols) * (28 + gap) + gap
        ax.text(left + 14, top - 1, f"{digits[i]}+{addends[i]}={sums[i]}\npred {digit_pred[i]}, {sum_pred[i]}",
                ha="center", va="bottom", fontsize=8, color="red" if wrong[i] else "black")
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title(f"test pairs: image, addend -> target digit+addend=sum / predicted digit, sum "
                 f"({int(wrong.sum())} of {len(test_set)} wrong, shown first in red)", fontsize=9)
    fig.tight_layout()
    return fig


def confusion_figure(digit_confusion: torch.Tensor, sum_confusion: torch.Tensor) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [10, 19]})
    for ax, matrix, name in ((axes[0], digit_confusion, "digit"), (axes[1], sum_confusion, "sum")):
        # Log colours: the diagonal holds thousands, the mistakes single digits.
        ax.imshow(matrix.clamp(min=0.5).log10().numpy(), cmap="Blues")
        n = len(matrix)
        for t in range(n):
            for p in range(n):
                if matrix[t, p] and t != p:
                    ax.text(p, t, int(matrix[t, p]), ha="center", va="center", fontsize=7, color="red")
        ax.set(title=f"{name} head over all test pairs; mistakes in red",
               xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def run_figures(epochs: list[dict], answers: dict[str, torch.Tensor], test_set: DeviceMNIST,
                test_results: dict) -> dict[str, plt.Figure]:
    """The figures of a finished run, by file name stem; train.py also sends them to the tracker.
    `answers` are the model's one_addend_predictions on `test_set`, `test_results` its evaluation."""
    return {
        "curves": curves_figure(epochs),
        "test_predictions": predictions_figure(answers, test_set),
        "confusion": confusion_figure(test_results["digit_confusion"], test_results["sum_confusion"]),
    }


def save_figures(figures: dict[str, plt.Figure], out: Path) -> dict[str, Path]:
    """Each figure as OUT/NAME.png, written as atomically as the run's other files (a failed save keeps the
    previous picture), then closed (pyplot would keep it); returns the files by name (the tracker logs these
    files as they are)."""
    files = {name: out / f"{name}.png" for name in figures}
    try:
        for name, fig in figures.items():
            atomic_write(files[name], partial(fig.savefig, format="png", dpi=110))
    finally:
        for fig in figures.values():
            plt.close(fig)
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a train.py --output_dir")
    p.add_argument("--data_dir", default=TrainConfig.data_dir, help="folder holding MNIST/raw/")
    p.add_argument("--out", type=Path, default=None, help="where the PNG files go (default RUN_DIR/logs)")
    args = p.parse_args(argv)
    out = args.out or args.run_dir / "logs"
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = args.run_dir / "logs" / "metrics.jsonl"
    if not metrics_file.is_file():
        sys.exit(f"error: {metrics_file} not found: is {args.run_dir} a train.py --output_dir?")
    try:
        model, _ = load_model(args.run_dir / "best.pt")
        test_set = DeviceMNIST(*load_mnist(args.data_dir, train=False))
    except (CheckpointError, DataError) as err:
        sys.exit(f"error: {err}")
    figures = run_figures(read_metrics(metrics_file), one_addend_predictions(model, test_set), test_set,
                          evaluate(model, test_set))
    save_figures(figures, out)
    print(f"wrote {', '.join(f'{name}.png' for name in figures)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
