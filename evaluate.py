"""Evaluate a trained adder on all 100,000 MNIST test pairs (each test image with each addend 0-9),
or ask it about pictures of your own digits.

    python evaluate.py --ckpt best.pt                      # results table
    python evaluate.py --ckpt best.pt --json               # the same as JSON
    python evaluate.py --ckpt best.pt --tta                # CNN features averaged over 1-pixel shifts
    accelerate launch evaluate.py --ckpt best.pt           # sharded over the launched processes, same numbers
    python evaluate.py --ckpt best.pt --image my_digit.png --addend 7   # your digit, plus 7
    python evaluate.py --ckpt best.pt --image drawings/                 # each picture there, all ten sums

Your own picture may be any size and kind PIL opens: a drawing, a photo of ink on paper, a transparent PNG.
Each is turned into a 28x28 digit the way MNIST's digits were made (adder/digit_image.py); --save_preprocessed
shows what the model saw. A picture that cannot be read is reported and the others are still answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from PIL import Image

from adder.checkpoint import CheckpointError, load_model
from adder.config import TrainConfig, positive_int
from adder.data import DataError, DeviceMNIST, load_mnist_on_every_process, normalize
from adder.digit_image import DigitImageError, image_files, read_image
from adder.errors import ArgumentParser, exit_with_error, speaks_for_its_machine
from adder.evaluation import EVAL_BATCH, evaluate, reproducible_convolutions
from adder.hardware import place_run
from adder.metrics import report
from adder.model import NUM_SUMS, ShiftAveraged, count_parameters


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py (best.pt)")
    p.add_argument("--data_dir", default=TrainConfig.data_dir,
                   help=f"folder holding MNIST/raw/ (downloaded there if absent; default: {TrainConfig.data_dir})")
    p.add_argument("--batch_size", type=positive_int, default=EVAL_BATCH,
                   help=f"test images per forward pass (x10 pairs; default: {EVAL_BATCH})")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--cpu", action="store_true", help="evaluate on the CPU even if a GPU is present")
    p.add_argument("--tta", action="store_true",
                   help="report on the CNN features averaged over the image and its four 1-pixel shifts (5x the compute)")
    p.add_argument("--image", nargs="+", metavar="PATH",
                   help="pictures of one digit each, of any size, or folders of them, to run the model on")
    p.add_argument("--addend", type=int, help="the number (0-9) to add to each digit in --image (all ten if omitted)")
    p.add_argument("--save_preprocessed", metavar="DIR",
                   help="write the 28x28 digit each --image picture became to DIR, as a PNG of the same name")
    args = p.parse_args(argv)
    if args.image is None and (args.addend is not None or args.save_preprocessed):
        p.error("--addend and --save_preprocessed go with --image")
    if args.addend is not None and not 0 <= args.addend <= 9:
        p.error(f"--addend must be between 0 and 9, got {args.addend}")
    return args


def predict(model, images: torch.Tensor, addends: list[int]) -> list[dict]:
    """The model's answers for uint8 images (B, 28, 28), each image with every addend in `addends`."""
    with torch.no_grad():
        digit_logits, sum_logits = model(normalize(images), torch.tensor([addends] * len(images)))
    return [{"digit": int(digit_probs.argmax()), "digit_prob": float(digit_probs.max()),
             "sums": [{"addend": addend, "sum": int(probs.argmax()), "sum_prob": float(probs.max())}
                      for addend, probs in zip(addends, sum_probs)]}
            for digit_probs, sum_probs in zip(digit_logits.softmax(-1), sum_logits.softmax(-1))]


def answer_own_images(model, args: argparse.Namespace) -> int:
    """Answer for every --image picture that becomes a digit; each one that does not is one error line.
    Returns the exit status: 1 if any picture failed."""
    try:
        paths = image_files(args.image)
        if args.save_preprocessed:
            Path(args.save_preprocessed).mkdir(parents=True, exist_ok=True)
    except DigitImageError as err:
        sys.exit(f"error: {err}")
    except OSError as err:  # the --save_preprocessed folder
        why = "not a folder" if Path(args.save_preprocessed).exists() else err.strerror
        sys.exit(f"error: cannot write to {args.save_preprocessed}: {why}")
    answered, images = [], []
    for path in paths:
        try:
            images.append(read_image(path))
            answered.append(path)
        except DigitImageError as err:
            print(f"error: {err}", file=sys.stderr)
    if not answered:
        return 1
    if args.save_preprocessed:
        for name, image in zip(preprocessed_names(answered), images):
            target = Path(args.save_preprocessed) / name
            try:
                Image.fromarray(image.numpy()).save(target)
            except OSError as err:  # a full disk, say: no answers rather than answers without their pictures
                sys.exit(f"error: cannot write {target}: {err.strerror or err}")
    addends = list(range(10)) if args.addend is None else [args.addend]
    answers = predict(model, torch.stack(images), addends)
    if args.json:
        print(json.dumps({"checkpoint": args.ckpt, "tta": args.tta,
                          "images": [{"image": str(path)} | answer for path, answer in zip(answered, answers)]}))
    else:
        print(own_images_table(answered, answers))
    return int(len(answered) < len(paths))


def preprocessed_names(paths: list[Path]) -> list[str]:
    """A PNG name per picture for its 28x28 version: the picture's stem, numbered where one is taken."""
    names: list[str] = []
    for path in paths:
        name, number = f"{path.stem}.png", 1
        while name in names:  # a/1.png and b/1.png, or seven.jpg and seven.png
            number += 1
            name = f"{path.stem}_{number}.png"
        names.append(name)
    return names


def own_images_table(paths: list[Path], answers: list[dict]) -> str:
    """One row per picture and addend, within 80 columns; a picture's digit is shown on its first row."""
    lines = [f"{'file':<38}{'digit':>7}{'p':>7}{'addend':>8}{'sum':>5}{'p':>7}"]
    for path, answer in zip(paths, answers):
        name = str(path) if len(str(path)) <= 37 else "..." + str(path)[-34:]  # the end names the file
        read = f"{name:<38}{answer['digit']:>7}{answer['digit_prob']:>7.3f}"
        for row, added in enumerate(answer["sums"]):
            sums = f"{added['addend']:>8}{added['sum']:>5}{added['sum_prob']:>7.3f}"
            lines.append(f"{read if row == 0 else '':<52}{sums}")
    return "\n".join(lines)


def results_table(results: dict, ckpt_path: str, ckpt: dict, parameters: int, tta: bool) -> str:
    """The report as text, within 80 columns."""
    def row(name: str, count_key: str, fraction_key: str) -> str:
        return f"{name:<14}{results[fraction_key]:>9.2%}{results[count_key]:>10,} / {results['pairs']:,}"

    lines = [
        f"checkpoint   {ckpt_path} (epoch {ckpt['epoch']}, {parameters:,} parameters)",
        f"test pairs   {results['pairs']:,} (every test image x every addend 0-9)",
        f"shifts       {'averaged over the image and its four 1-pixel shifts' if tta else 'none'}",
        "",
        row("digit acc", "digit_correct", "digit_acc"),
        row("sum acc", "sum_correct", "sum_acc"),
        row("joint acc", "joint_correct", "joint_acc"),
        row("consistency", "consistent", "consistency"),
        f"{'mean loss':<14}{results['loss']:>9.4f}  (cross-entropy, digit + sum)",
        "",
        "accuracy per sum",
    ]
    per_sum = results["per_sum_acc"]
    for first in range(0, NUM_SUMS, 10):  # two rows of at most ten sums keep the table narrow
        sums = range(first, min(first + 10, NUM_SUMS))
        lines.append("sum " + "".join(f"{s:>7d}" for s in sums))
        lines.append("acc " + "".join("      -" if per_sum[s] is None else f"{per_sum[s]:>7.1%}" for s in sums))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        model, ckpt = load_model(args.ckpt)
    except CheckpointError as err:
        exit_with_error(str(err))
    parameters = count_parameters(model)
    if args.tta:
        model = ShiftAveraged(model)

    if args.image is not None:  # under a multi-process launch, one table a machine
        return answer_own_images(model, args) if speaks_for_its_machine() else 0

    # fp32 whatever the launch config says: the numbers train.py's report gives.
    placement = place_run(args.cpu, "no")
    accelerator = Accelerator(cpu=placement.cpu, mixed_precision=placement.mixed_precision)
    if not accelerator.is_main_process:
        logging.getLogger("adder").setLevel(logging.ERROR)  # the data's notes once, not once per process
    try:
        ((images, labels),) = load_mnist_on_every_process(accelerator, args.data_dir, "test")
        test_set = DeviceMNIST(images, labels, accelerator.device)
        with reproducible_convolutions():  # as train.py's test report
            results = evaluate(model.to(accelerator.device), test_set, batch_size=args.batch_size,
                               rank=accelerator.process_index, world_size=accelerator.num_processes)
        if accelerator.is_main_process:
            if args.json:
                print(json.dumps(report(results) | {"epoch": ckpt["epoch"], "parameters": parameters,
                                                    "tta": args.tta}))
            else:
                print(results_table(results, args.ckpt, ckpt, parameters, args.tta))
    except DataError as err:  # every process stops, one says why
        sys.exit(f"error: {err}" if accelerator.is_main_process else 1)
    finally:
        accelerator.end_training()  # tears down the process group of a multi-process launch
    return 0


if __name__ == "__main__":
    sys.exit(main())
