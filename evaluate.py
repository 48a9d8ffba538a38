"""Evaluate a trained adder on all 100,000 MNIST test pairs (each test image with each addend 0-9),
or ask it about one image of your own.

    python evaluate.py --ckpt best.pt                      # results table
    python evaluate.py --ckpt best.pt --json               # the same as JSON
    python evaluate.py --ckpt best.pt --tta                # predictions averaged over 1-pixel shifts
    accelerate launch evaluate.py --ckpt best.pt           # sharded over the launched processes, same numbers
    python evaluate.py --ckpt best.pt --image my_digit.png --addend 7

Your own image must be a 28x28 picture of one digit. It is read as grayscale and, if its background is
light (mean brightness above one half), inverted, since MNIST digits are white on black.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image, UnidentifiedImageError

from adder.checkpoint import CheckpointError, load_model
from adder.data import DataError, DeviceMNIST, load_mnist, normalize
from adder.evaluation import evaluate
from adder.loss import AdderLoss
from adder.metrics import scalars
from adder.model import NUM_SUMS, ShiftAveraged, count_parameters


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py (best.pt)")
    p.add_argument("--data_dir", default="data", help="folder holding MNIST/raw/ (downloaded there if absent)")
    p.add_argument("--batch_size", type=int, default=1000, help="test images per forward pass (x10 pairs)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--cpu", action="store_true", help="evaluate on the CPU even if a GPU is present")
    p.add_argument("--tta", action="store_true",
                   help="average the predictions over the image and its four 1-pixel shifts (5x the compute)")
    p.add_argument("--image", help="a 28x28 image file of one digit to run the model on")
    p.add_argument("--addend", type=int, help="the number (0-9) to add to the digit in --image")
    args = p.parse_args(argv)
    if args.batch_size <= 0:
        p.error(f"--batch_size must be positive, got {args.batch_size}")
    if (args.image is None) != (args.addend is None):
        p.error("--image and --addend go together")
    if args.addend is not None and not 0 <= args.addend <= 9:
        p.error(f"--addend must be between 0 and 9, got {args.addend}")
    return args


def read_digit_image(path: str) -> torch.Tensor:
    """A 28x28 image file -> uint8 (1, 28, 28), white digit on black like MNIST."""
    try:
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"))
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"{path}: no such image file")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err.__class__.__name__})")
    if gray.shape != (28, 28):
        raise ValueError(f"{path}: image is {gray.shape[1]}x{gray.shape[0]}, expected 28x28 like MNIST")
    if gray.mean() > 127:
        gray = 255 - gray
    return torch.from_numpy(gray.copy()).unsqueeze(0)


def predict_one(model, image_u8: torch.Tensor, addend: int) -> dict:
    with torch.no_grad():
        digit_logits, sum_logits = model(normalize(image_u8), torch.tensor([addend]))
    digit_probs, sum_probs = digit_logits.softmax(-1)[0], sum_logits.softmax(-1)[0]
    return {"addend": addend, "digit": int(digit_probs.argmax()), "digit_prob": float(digit_probs.max()),
            "sum": int(sum_probs.argmax()), "sum_prob": float(sum_probs.max())}


def results_table(results: dict, ckpt_path: str, ckpt: dict, parameters: int, tta: bool) -> str:
    lines = [
        f"checkpoint   {ckpt_path} (epoch {ckpt['epoch']}, {parameters:,} parameters)",
        f"test pairs   {results['pairs']:,} (every test image x every addend 0-9)",
        f"shifts       {'averaged over the image and its four 1-pixel shifts' if tta else 'none'}",
        "",
        f"{'metric':<14}{'value':>10}",
        f"{'digit acc':<14}{results['digit_acc']:>10.2%}",
        f"{'sum acc':<14}{results['sum_acc']:>10.2%}",
        f"{'joint acc':<14}{results['joint_acc']:>10.2%}",
        f"{'consistency':<14}{results['consistency']:>10.2%}",
        f"{'mean loss':<14}{results['loss']:>10.4f}",
        "",
        "per-sum accuracy",
        "  ".join(f"{s:>6d}" for s in range(NUM_SUMS)),
        "  ".join(f"{a:>6.2%}" for a in results["per_sum_acc"]),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        model, ckpt = load_model(args.ckpt)
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    parameters = count_parameters(model)
    if args.tta:
        model = ShiftAveraged(model).eval()

    if args.image is not None:
        try:
            prediction = predict_one(model, read_digit_image(args.image), args.addend)
        except ValueError as err:
            sys.exit(f"error: {err}")
        if args.json:
            print(json.dumps(prediction))
        else:
            print(f"digit {prediction['digit']} (p={prediction['digit_prob']:.3f})   "
                  f"{prediction['digit']} + {args.addend} -> sum {prediction['sum']} (p={prediction['sum_prob']:.3f})")
        return 0

    accelerator = Accelerator(cpu=args.cpu)
    try:
        with accelerator.main_process_first():
            images, labels = load_mnist(args.data_dir, train=False)
    except DataError as err:
        sys.exit(f"error: {err}")
    test_set = DeviceMNIST(images, labels, accelerator.device)
    loss_fn = AdderLoss(**{k: ckpt["train_config"][k] for k in ("sum_weight", "label_smoothing")})
    results = evaluate(model.to(accelerator.device), test_set, loss_fn, batch_size=args.batch_size,
                       rank=accelerator.process_index, world_size=accelerator.num_processes)
    if accelerator.is_main_process:
        if args.json:
            print(json.dumps(scalars(results) | {"pairs": results["pairs"], "per_sum_acc": results["per_sum_acc"],
                                                 "epoch": ckpt["epoch"], "parameters": parameters, "tta": args.tta}))
        else:
            print(results_table(results, args.ckpt, ckpt, parameters, args.tta))
    accelerator.end_training()  # tears down the process group of a multi-process launch
    return 0


if __name__ == "__main__":
    sys.exit(main())
