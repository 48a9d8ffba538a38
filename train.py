"""Train the MNIST adder: an MNIST image and an addend 0-9 in, the digit and digit + addend out.

One GPU (the shipped config: one process, bf16):
    accelerate launch --config_file accelerate_config.yaml train.py
Whatever `accelerate config` set up (several GPUs, several nodes), or accelerate's defaults:
    accelerate launch train.py
CPU only, offline, with the MNIST archives in a writable DIR/MNIST/raw/ (torchvision extracts them there):
    python train.py --cpu --data_dir DIR
Continue a run that stopped (crash, kill, pre-emption) from its last saved epoch:
    accelerate launch train.py --resume_from_checkpoint latest

A run writes into --output_dir (default: the current directory):
    best.pt              the model with the best validation joint accuracy so far (python evaluate.py --ckpt best.pt)
    checkpoints/epoch_N  the full training state of the last --keep_states epochs
    logs/                console.log, metrics.jsonl, test_metrics.json, the wandb run folder
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from tqdm.auto import tqdm

from adder.checkpoint import atomic_write_text, load_model, read_checkpoint, save_checkpoint
from adder.data import DataError, DeviceMNIST, load_mnist, split_train_val, train_batches
from adder.ema import moving_average
from adder.evaluation import evaluate
from adder.loss import LABEL_SMOOTHING, AdderLoss
from adder.metrics import scalars
from adder.model import SUM_HEADS, AdderNet, ModelConfig, ShiftAveraged, count_parameters
from adder.optim import DEFAULTS as OPTIMIZER_DEFAULTS, OPTIMIZERS, build_optimizer
from adder.plots import figure_to_array, read_metrics, run_figures, save_figures
from adder.tracking import wandb_init_kwargs
from adder.training_state import load_training_state, resolve_state, save_training_state


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def conv_stage(text: str) -> list[int]:
    """'16,24' -> [16, 24]: the channels of one resolution's convs."""
    return [positive_int(part) for part in text.split(",")]


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def unit_fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # data
    p.add_argument("--data_dir", default="data", help="folder holding MNIST/raw/ (downloaded there if absent)")
    p.add_argument("--val_size", type=positive_int, default=5000, help="training images held out for model selection")
    p.add_argument("--no_augment", action="store_true", help="train on the images as they are")
    p.add_argument("--rotate", type=non_negative_float, default=10.0, help="augmentation: max rotation, degrees")
    p.add_argument("--shift", type=non_negative_float, default=0.1, help="augmentation: max shift, fraction of the width")
    p.add_argument("--zoom", type=non_negative_float, default=0.1, help="augmentation: max zoom in or out, fraction")
    p.add_argument("--distort", type=non_negative_float, default=0.0,
                   help="augmentation: max elastic displacement, pixels (0: none)")
    # model
    default_widths = " ".join(",".join(map(str, stage)) for stage in ModelConfig().widths)
    p.add_argument("--widths", type=conv_stage, nargs=3, default=ModelConfig().widths, metavar="C[,C...]",
                   help=f"channels of the 3x3 convs at 28x28, 14x14 and 7x7 (default: {default_widths})")
    p.add_argument("--sum_head", choices=SUM_HEADS, default=ModelConfig().sum_head,
                   help="how digit and addend meet (see adder/model.py)")
    p.add_argument("--sum_hidden", type=positive_int, default=ModelConfig().sum_hidden,
                   help="hidden units of the concat_* sum heads' MLP")
    # optimisation
    p.add_argument("--epochs", type=positive_int, default=20, help="passes over the training images")
    p.add_argument("--batch_size", type=positive_int, default=512, help="images per step and process")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="SGD with Nesterov momentum, or AdamW")
    p.add_argument("--lr", type=non_negative_float, default=None,
                   help="peak learning rate of the one-cycle schedule (default: 0.1 for sgd, 4e-3 for adamw)")
    p.add_argument("--weight_decay", type=non_negative_float, default=None,
                   help="weight decay (default: 5e-4 for sgd, 1e-4 for adamw)")
    p.add_argument("--sum_weight", type=non_negative_float, default=1.0, help="weight of the sum loss vs the digit loss")
    p.add_argument("--label_smoothing", type=unit_fraction, default=LABEL_SMOOTHING,
                   help=f"cross-entropy label smoothing, in [0, 1) (default {LABEL_SMOOTHING}; 0: plain cross-entropy)")
    p.add_argument("--ema_decay", type=unit_fraction, default=0.0,
                   help="validate and save a moving average of the weights with this decay, e.g. 0.999 (0: off)")
    p.add_argument("--seed", type=int, default=42, help="seeds initialisation, shuffling, addends and augmentation")
    # hardware
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="overrides the accelerate config (the shipped one uses bf16)")
    # bookkeeping
    p.add_argument("--output_dir", default=".", help="where best.pt, checkpoints/ and logs/ go")
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoints/epoch_N folder")
    p.add_argument("--keep_states", type=positive_int, default=2, help="how many epochs' training states to keep")
    p.add_argument("--log_every", type=positive_int, default=20, help="steps between train-loss logs (a host sync)")
    p.add_argument("--report_to", choices=["wandb", "none"], default="wandb", help="experiment tracker")
    p.add_argument("--run_name", default=None, help="name of the wandb run")
    args = p.parse_args(argv)
    if args.zoom >= 1:
        p.error(f"--zoom must be below 1, got {args.zoom}")
    default_lr, default_weight_decay = OPTIMIZER_DEFAULTS[args.optimizer]
    args.lr = default_lr if args.lr is None else args.lr
    args.weight_decay = default_weight_decay if args.weight_decay is None else args.weight_decay
    return args


def setup_console_log(path: Path, enabled: bool) -> logging.Logger:
    """Everything the run says goes to the console and to logs/console.log (main process only)."""
    log = logging.getLogger("train")
    log.setLevel(logging.INFO if enabled else logging.WARNING)
    log.propagate = False
    log.handlers.clear()  # a second run in the same process (the benchmark) starts a fresh log
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(path, mode="a")):
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    return log


def fmt(metrics: dict) -> str:
    return (f"digit {metrics['digit_acc']:.2%}  sum {metrics['sum_acc']:.2%}  joint {metrics['joint_acc']:.2%}  "
            f"consistency {metrics['consistency']:.2%}  loss {metrics['loss']:.4f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    best_path, checkpoints_dir, logs_dir = output_dir / "best.pt", output_dir / "checkpoints", output_dir / "logs"
    if args.resume_from_checkpoint is None and (best_path.exists() or checkpoints_dir.exists()):
        # Never overwrite a model the user already has: a new run needs a new place.
        sys.exit(f"error: {output_dir.resolve()} already holds a run (best.pt or checkpoints/). Continue it with "
                 f"--resume_from_checkpoint latest, or start a new one with --output_dir NEW_DIR.")

    accelerator = Accelerator(
        cpu=args.cpu,
        mixed_precision=args.mixed_precision,
        log_with="wandb" if args.report_to == "wandb" else None,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,  # the schedule below counts this process's steps itself
    )
    if accelerator.is_main_process:
        logs_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    log = setup_console_log(logs_dir / "console.log", accelerator.is_main_process)
    device, rank, world_size = accelerator.device, accelerator.process_index, accelerator.num_processes
    log.info(f"command: {' '.join(sys.argv)}")
    log.info(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
             f"{world_size} process(es), mixed precision: {accelerator.mixed_precision}")
    if device.type == "cpu" and not args.cpu:
        log.warning("no GPU found: training on the CPU, which is much slower (pass --cpu to silence this)")
    set_seed(args.seed)

    # Data: each split lives on the device as one uint8 tensor; batches are made by indexing it.
    try:
        with accelerator.main_process_first():  # one process downloads, the others wait and read
            train_images, train_labels = load_mnist(args.data_dir, train=True)
            test_images, test_labels = load_mnist(args.data_dir, train=False)
        (train_images, train_labels), (val_images, val_labels) = split_train_val(train_images, train_labels, args.val_size)
    except (DataError, ValueError) as err:
        sys.exit(f"error: {err}")
    train_set = DeviceMNIST(train_images, train_labels, device)
    val_set = DeviceMNIST(val_images, val_labels, device)
    test_set = DeviceMNIST(test_images, test_labels, device)
    augment = None if args.no_augment else {"degrees": args.rotate, "translate": args.shift, "scale": args.zoom,
                                            "distort": args.distort}
    steps_per_epoch = len(train_batches(len(train_set), args.batch_size, args.seed, 0, rank, world_size))
    log.info(f"data: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test images; "
             f"validation and test score every image with all 10 addends; {steps_per_epoch} steps per epoch")

    # Model, loss, optimiser and schedule.
    model_config = ModelConfig(widths=args.widths, sum_head=args.sum_head, sum_hidden=args.sum_hidden)
    model = AdderNet(model_config).to(memory_format=torch.channels_last)
    log.info(f"model: {count_parameters(model):,} parameters, {model_config.to_dict()}")
    loss_fn = AdderLoss(sum_weight=args.sum_weight, label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw_model = accelerator.unwrap_model(model)
    # The model that is validated, saved and tested: the weights themselves, or with --ema_decay a moving
    # average of them (and of BatchNorm's statistics) over the last ~1/(1-decay) steps. The average is only
    # built when asked for: its update waits for the device once a step (see adder/ema.py).
    ema = moving_average(raw_model, args.ema_decay) if args.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # part of the training state, so a resumed run is identical
    eval_model = raw_model if ema is None else ema.module  # evaluation runs per process, outside DDP

    train_config = dict(vars(args))
    if args.report_to == "wandb" and not accelerator.log_with:
        log.warning("wandb is not installed: tracking is off (pip install wandb, or --report_to none to silence this)")
    wandb_kwargs = wandb_init_kwargs(str(logs_dir), args.run_name) if accelerator.log_with else {}
    if accelerator.log_with:
        accelerator.init_trackers("mnist-adder", config=train_config, init_kwargs={"wandb": wandb_kwargs})

    start_epoch, global_step, best_joint = 1, 0, -1.0
    if args.resume_from_checkpoint:
        try:
            state_dir = resolve_state(args.resume_from_checkpoint, checkpoints_dir)
        except FileNotFoundError as err:
            sys.exit(f"error: {err}")
        progress = load_training_state(accelerator, state_dir)
        start_epoch, global_step = progress["epoch"] + 1, progress["global_step"]
        if best_path.exists():
            best_joint = read_checkpoint(best_path)["val_metrics"]["joint_acc"]
        log.info(f"resumed from {state_dir} (epoch {progress['epoch']}, step {global_step}, best val joint {best_joint:.4%})")

    metrics_file = logs_dir / "metrics.jsonl"
    # One row per finished epoch; a resumed run drops the rows of epochs it is about to redo.
    epoch_rows = [r for r in read_metrics(metrics_file) if r["epoch"] < start_epoch] if metrics_file.exists() else []
    run_start = time.perf_counter()
    for epoch in range(start_epoch, args.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        batches = train_batches(len(train_set), args.batch_size, args.seed, epoch, rank, world_size, device)
        window_loss, epoch_loss = torch.zeros((), device=device), torch.zeros((), device=device)
        for step, index in enumerate(tqdm(batches, desc=f"epoch {epoch}", leave=False,
                                          disable=not accelerator.is_local_main_process), start=1):
            images, addends, digits, sums = train_set.train_batch(index, args.seed, epoch, augment)
            digit_logits, sum_logits = model(images.contiguous(memory_format=torch.channels_last), addends)
            loss = loss_fn(digit_logits, sum_logits, digits, sums)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(raw_model)
            global_step += 1
            window_loss += loss.detach()
            if step % args.log_every == 0 or step == len(batches):
                # The inner loop's only host sync, every log_every steps; all processes see the same value.
                steps_in_window = (step - 1) % args.log_every + 1
                mean_loss = accelerator.reduce(window_loss, "mean").item() / steps_in_window
                epoch_loss += window_loss
                window_loss.zero_()
                if not math.isfinite(mean_loss):
                    log.error(f"error: training loss is {mean_loss} at epoch {epoch} step {step}; stopping. "
                              f"best.pt and the saved training states keep the last good model.")
                    accelerator.end_training()
                    return 1
                accelerator.log({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0],
                                 "epoch": epoch}, step=global_step)
        train_seconds = time.perf_counter() - epoch_start
        train_loss = accelerator.reduce(epoch_loss, "mean").item() / len(batches)

        # DDP runs each forward with rank 0's BatchNorm statistics, but every process's last update of them
        # stays local; taking rank 0's here makes all processes validate (and a resumed run continue) the same
        # model.
        broadcast(list(eval_model.buffers()), from_process=0)
        val = evaluate(eval_model, val_set, loss_fn, rank=rank, world_size=world_size, autocast=accelerator.autocast)
        improved = val["joint_acc"] > best_joint
        log.info(f"epoch {epoch:2d}/{args.epochs}  val: {fmt(val)}  ({train_seconds:.1f}s train, "
                 f"{time.perf_counter() - epoch_start:.1f}s total){'  -> best.pt' if improved else ''}")
        accelerator.log({f"val/{k}": v for k, v in scalars(val).items()} | {"epoch": epoch}, step=global_step)
        if accelerator.is_main_process:
            epoch_rows.append({"epoch": epoch, "step": global_step, "lr": scheduler.get_last_lr()[0],
                               "train_loss": train_loss, "train_seconds": train_seconds}
                              | {f"val_{k}": v for k, v in scalars(val).items()})
            atomic_write_text(metrics_file, "".join(json.dumps(row) + "\n" for row in epoch_rows))
            if improved:
                save_checkpoint(best_path, eval_model, train_config=train_config, epoch=epoch, val_metrics=scalars(val))
        if improved:
            best_joint = val["joint_acc"]
        save_training_state(accelerator, checkpoints_dir, epoch, global_step, keep=args.keep_states)
    accelerator.wait_for_everyone()
    log.info(f"training done in {time.perf_counter() - run_start:.1f}s")

    # Final report: the selected model on the test set, which played no part in training or selection.
    best_model, best_ckpt = load_model(best_path)
    # In fp32, like evaluate.py, so that the two report the same numbers for the same file.
    test = evaluate(best_model.to(device), test_set, loss_fn, rank=rank, world_size=world_size)
    log.info(f"test (best.pt from epoch {best_ckpt['epoch']}, {test['pairs']:,} pairs): {fmt(test)}")
    # Test-time augmentation, reported beside the plain numbers rather than instead of them (README.md).
    shifted = evaluate(ShiftAveraged(best_model), test_set, loss_fn, rank=rank, world_size=world_size)
    log.info(f"test, averaged over 1-pixel shifts (evaluate.py --tta): {fmt(shifted)}")
    accelerator.log({f"test/{k}": v for k, v in scalars(test).items()}
                    | {f"test_tta/{k}": v for k, v in scalars(shifted).items()}, step=global_step)
    if accelerator.is_main_process:
        atomic_write_text(logs_dir / "test_metrics.json", json.dumps(
            {"epoch": best_ckpt["epoch"], "pairs": test["pairs"], "parameters": count_parameters(best_model)}
            | scalars(test) | {"per_sum_acc": test["per_sum_acc"], "tta": scalars(shifted)}, indent=2))
        figures = run_figures(read_metrics(metrics_file), best_model, test_set, test)
        save_figures(figures, logs_dir)
        if accelerator.log_with:
            accelerator.get_tracker("wandb").log_images(
                {name: [figure_to_array(fig)] for name, fig in figures.items()}, step=global_step)
        log.info(f"figures: {', '.join(str(logs_dir / f'{name}.png') for name in figures)}")
    accelerator.end_training()
    if accelerator.log_with and wandb_kwargs.get("mode") == "offline":
        log.info(f"wandb ran offline (not logged in); upload the run with: wandb sync {logs_dir / 'wandb'}/offline-run-*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
