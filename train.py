"""Train the MNIST adder: an MNIST image and an addend 0-9 in, the digit and digit + addend out.

One GPU (the shipped config: one process, bf16):
    accelerate launch --config_file accelerate_config.yaml train.py
Whatever `accelerate config` set up (several GPUs, several nodes), or accelerate's defaults:
    accelerate launch train.py
No GPU: the same commands train on the CPU (bf16 only where the CPU has it natively); or, with the MNIST
archives in a writable DIR/MNIST/raw/:
    python train.py --data_dir DIR
Continue a run that stopped (crash, kill, pre-emption) from its last saved epoch, launched as it was:
    accelerate launch --config_file accelerate_config.yaml train.py --resume_from_checkpoint latest

A run writes into --output_dir (default: the current directory):
    best.pt                the model with the best validation joint accuracy so far (evaluate.py --ckpt best.pt)
    checkpoints/epoch_NNN  the full training state of the last --keep_states epochs
    logs/                  console.log, metrics.jsonl, test_metrics.json, the figures, the wandb run folder
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from tqdm.auto import tqdm

from adder.checkpoint import CheckpointError, load_model, save_checkpoint
from adder.config import TrainConfig, parse_config
from adder.data import DataError, DeviceMNIST, load_mnist_on_every_process, split_train_val, train_batches
from adder.distributed import all_or_none, first_failure, from_main_process
from adder.ema import moving_average
from adder.errors import exit_with_error
from adder.evaluation import evaluate, one_addend_predictions, reproducible_convolutions
from adder.files import atomic_write_text, read_metrics
from adder.hardware import Placement, PlacementError, cpu_name, place_run
from adder.loss import AdderLoss
from adder.metrics import report, scalars
from adder.model import AdderNet, ShiftAveraged, count_parameters
from adder.optim import build_optimizer
from adder.plots import run_figures, save_figures
from adder.step import CaptureFailed, ForwardBackward, why_eager
from adder.tracking import Tracking
from adder.training_state import ResumeError, is_compiled, resume_run, save_training_state, saved_states, state_folder


class RunFailed(Exception):
    """Ends the run with its message as one error line, in console.log and on stderr."""


class RunFolder:
    """The files of a run under --output_dir."""

    def __init__(self, output_dir: str):
        self.root = Path(output_dir)
        self.best = self.root / "best.pt"
        self.checkpoints = self.root / "checkpoints"
        self.logs = self.root / "logs"
        self.metrics = self.logs / "metrics.jsonl"

    def holds_a_run(self) -> bool:
        return self.best.exists() or self.checkpoints.exists()


def console_log(path: Path, main_process: bool) -> logging.Logger:
    """Everything the run says, once: on the console (errors and warnings on stderr) and in logs/console.log.

    The handlers go on the package's logger, "adder", so that its modules' notes land there too; only the
    main process gets them, so N processes print each line once. (accelerate.logging filters by process
    too, but prefixes every line with its rank.)
    """
    package_log = logging.getLogger("adder")
    package_log.propagate = False
    for handler in package_log.handlers[:]:  # a second run in the same process (the benchmark) starts afresh
        handler.close()
        package_log.removeHandler(handler)
    if main_process:
        package_log.setLevel(logging.INFO)
        stdout = logging.StreamHandler(sys.stdout)
        stdout.addFilter(lambda record: record.levelno < logging.WARNING)
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.WARNING)
        for handler in (stdout, stderr, logging.FileHandler(path, mode="a")):
            handler.setFormatter(logging.Formatter("%(message)s"))
            package_log.addHandler(handler)
    else:
        package_log.setLevel(logging.CRITICAL + 1)
        package_log.addHandler(logging.NullHandler())
    return logging.getLogger("adder.train")


def seconds_since_process_start() -> float:
    """Wall seconds since this process began: its interpreter, imports, Accelerator and CUDA start. On Linux
    counted from the uptime clock: create_time() adds the boot time, which Linux gives in whole seconds."""
    process = psutil.Process()
    try:
        return float(Path("/proc/uptime").read_text().split()[0]) - (process.create_time() - psutil.boot_time())
    except OSError:  # no /proc: not Linux
        return time.time() - process.create_time()


def format_metrics(metrics: dict) -> str:
    return (f"digit {metrics['digit_acc']:.2%}  sum {metrics['sum_acc']:.2%}  joint {metrics['joint_acc']:.2%}  "
            f"consistency {metrics['consistency']:.2%}  loss {metrics['loss']:.4f}")


@contextlib.contextmanager
def saving(what: Path, safe: str):
    """Turns a failed write (disk full, folder not writable...) into one line naming the file and what is safe."""
    try:
        yield
    except OSError as err:
        raise RunFailed(f"could not write {what} ({err.strerror or err}). Still safe: {safe}.") from err


def still_safe(best_epoch: int, saved_epoch: int) -> str:
    """What a failed write leaves intact, for its error message (epoch 0: none yet)."""
    safe = [f"best.pt from epoch {best_epoch}"] if best_epoch else []
    if saved_epoch:
        safe.append(f"the training state of epoch {saved_epoch}")
    return " and ".join(safe) or "nothing yet"


def load_data(config: TrainConfig, accelerator: Accelerator) -> tuple[DeviceMNIST, DeviceMNIST, DeviceMNIST]:
    """The train, validation and test splits, each held whole on the training device."""
    try:
        (train_images, train_labels), (test_images, test_labels) = load_mnist_on_every_process(
            accelerator, config.data_dir, "train", "test")
        (train_images, train_labels), (val_images, val_labels) = split_train_val(train_images, train_labels,
                                                                                 config.val_size)
    except (DataError, ValueError) as err:
        raise RunFailed(str(err)) from err
    device = accelerator.device
    return (DeviceMNIST(train_images, train_labels, device), DeviceMNIST(val_images, val_labels, device),
            DeviceMNIST(test_images, test_labels, device))


def final_report(config: TrainConfig, folder: RunFolder, accelerator: Accelerator, test_set: DeviceMNIST,
                 epoch_rows: list[dict], tracking: Tracking, global_step: int, log: logging.Logger) -> None:
    """best.pt on the test set, which played no part in training or selection: logged, written to
    logs/test_metrics.json, drawn (with the curves of `epoch_rows`, metrics.jsonl's rows), and sent to the
    tracker."""
    device, rank, world_size = accelerator.device, accelerator.process_index, accelerator.num_processes
    # best.pt as the main process reads it (deleted or damaged while the run went on: one error line).
    best_model, best_ckpt = from_main_process(accelerator, lambda: load_model(folder.best), CheckpointError,
                                              raise_as=RunFailed)
    best_model.to(device)
    # In fp32 and with the same convolution algorithms as evaluate.py: the two report the same numbers for the
    # same file, and the figure shows the answers they counted.
    with reproducible_convolutions():
        test = evaluate(best_model, test_set, rank=rank, world_size=world_size)
        # Test-time augmentation, reported beside the plain numbers rather than instead of them (README.md).
        shifted = evaluate(ShiftAveraged(best_model), test_set, rank=rank, world_size=world_size)
        # The figure's and the tracker's table of answers, one random addend per image.
        answers = one_addend_predictions(best_model, test_set) if accelerator.is_main_process else None
    log.info(f"test (best.pt from epoch {best_ckpt['epoch']}, {test['pairs']:,} pairs): {format_metrics(test)}")
    log.info(f"test, averaged over 1-pixel shifts (evaluate.py --tta): {format_metrics(shifted)}")
    if accelerator.is_main_process:
        safe = still_safe(best_ckpt["epoch"], saved_epoch=config.epochs)
        test_metrics = folder.logs / "test_metrics.json"
        with saving(test_metrics, safe):
            atomic_write_text(test_metrics, json.dumps(
                {"epoch": best_ckpt["epoch"], "parameters": count_parameters(best_model)} | report(test)
                | {"tta": report(shifted)}, indent=2))
        figures = run_figures(epoch_rows, answers, test_set, test)
        with saving(folder.logs, safe):
            figure_files = save_figures(figures, folder.logs)
        log.info(f"figures: {', '.join(map(str, figure_files.values()))}")
        tracking.log_test_results(global_step, test, shifted, checkpoint=folder.best, saved=best_ckpt,
                                  answers=answers, test_set=test_set, figures=figure_files)


def train(config: TrainConfig, folder: RunFolder, accelerator: Accelerator, log: logging.Logger) -> None:
    device, rank, world_size = accelerator.device, accelerator.process_index, accelerator.num_processes
    set_seed(config.seed)

    # Data: each split lives on the device as one uint8 tensor; batches are made by indexing it.
    setup_start = time.perf_counter()  # the set-up's seconds, logged: part of a short run's wall time
    train_set, val_set, test_set = load_data(config, accelerator)
    # Counted as train_batches cuts an epoch (a last batch too small to share is merged), not by division.
    steps_per_epoch = len(train_batches(len(train_set), config.batch_size, config.seed, 0, rank, world_size))
    batch = str(config.batch_size) if world_size == 1 else f"{world_size} x {config.batch_size} (per process)"
    log.info(f"data: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test images; "
             f"validation and test score every image with all 10 addends; {steps_per_epoch} steps per epoch of "
             f"batch {batch} (loaded in {time.perf_counter() - setup_start:.1f}s)")

    # Model, loss, optimiser and schedule.
    model = AdderNet(config.model_config).to(memory_format=torch.channels_last)
    log.info(f"model: {count_parameters(model):,} parameters, {config.model_config.to_dict()}")
    loss_fn = AdderLoss(sum_weight=config.sum_weight, label_smoothing=config.label_smoothing)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                    total_steps=config.epochs * steps_per_epoch)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # The module itself, without DDP's wrapper or torch.compile's (accelerate launch --dynamo_backend ...):
    # its state_dict has the names best.pt needs, and validation runs it as it is, in the run's mixed precision
    # (its forward keeps accelerate's autocast wrapper).
    raw_model = accelerator.unwrap_model(model, keep_torch_compile=False)
    # The model that is validated, saved and tested: the weights themselves, or with --ema_decay a moving
    # average of them (and of BatchNorm's statistics) over the last ~1/(1-decay) steps, a decay that warms up
    # (adder/ema.py). The average is only built when asked for: its update waits for the device once a step.
    ema = moving_average(raw_model, config.ema_decay) if config.ema_decay else None  # saved with the state
    eval_model = raw_model if ema is None else ema.module  # evaluation runs per process, outside DDP

    # The step's forward and backward: replayed from a CUDA graph where one can hold it, else eager (adder/step.py).
    eager_because = why_eager(device, world_size, is_compiled(accelerator), config.no_cuda_graph)
    # cuDNN times its algorithms for each convolution shape once and keeps the fastest: a few seconds at the
    # first batches, then 0.18 s an epoch on an H200 instead of 0.27 s (docs/experiments.md, "GPU: cuDNN's
    # autotuning"). No effect on a CPU.
    torch.backends.cudnn.benchmark = not config.no_cudnn_benchmark
    if device.type == "cuda":  # on a CPU the step is always eager: nothing to say
        step_kind = f"eager ({eager_because})" if eager_because else "a CUDA graph, captured at the first batch"
        algorithms = ("heuristics (--no_cudnn_benchmark)" if config.no_cudnn_benchmark
                      else "timed per shape (cudnn.benchmark)")
        log.info(f"training step: {step_kind}; cuDNN's algorithms: {algorithms}")
    forward_backward = ForwardBackward(model, loss_fn, train_set, accelerator.backward, seed=config.seed,
                                       augment=config.augment, cuda_graph=eager_because is None)

    start_epoch, global_step, best = 1, 0, {"epoch": 0, "joint_acc": -1.0}
    if config.resume_from_checkpoint is not None:
        resumed_from, progress, best = resume_run(accelerator, config, folder.checkpoints, folder.best, ema)
        start_epoch, global_step = progress["epoch"] + 1, progress["global_step"]
        log.info(f"resumed from {resumed_from} (epoch {progress['epoch']}, step {global_step}, "
                 f"best val joint {best['joint_acc']:.4%} at epoch {best['epoch']})")
    if start_epoch > config.epochs:
        log.info(f"every epoch (of {config.epochs}) was trained already: only the test report runs again")
    tracking = Tracking.start(accelerator, config.to_dict(), logs_dir=folder.logs, run_name=config.run_name,
                              log_model=not config.no_log_model)

    # One row per finished epoch; a resumed run drops the rows of epochs it is about to redo.
    epoch_rows = [r for r in read_metrics(folder.metrics) if r["epoch"] < start_epoch] if folder.metrics.exists() else []
    log.info(f"set-up (data, model, optimiser, tracker) done in {time.perf_counter() - setup_start:.1f}s")
    run_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        safe = still_safe(best["epoch"], saved_epoch=epoch - 1)  # what a failure in this epoch leaves intact
        model.train()
        epoch_start, started_at = time.perf_counter(), time.time()
        batches = train_batches(len(train_set), config.batch_size, config.seed, epoch, rank, world_size, device)
        step_losses, logged_steps = torch.zeros(len(batches), device=device), 0  # read by the host at log points
        # The bar on a terminal only (disable=None): redirected to a file, it would write a line per update.
        progress_bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                            disable=None if accelerator.is_local_main_process else True)
        for step, index in enumerate(progress_bar, start=1):
            # No optimizer.zero_grad(): the step zeroes and refills .grad itself, or the CUDA graph's replay
            # overwrites it in place (adder/step.py).
            step_losses[step - 1] = forward_backward(index, epoch)  # copied at once: a replay overwrites it
            lr = scheduler.get_last_lr()[0]  # this step's rate: after scheduler.step() it is the next one's
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(raw_model)
            global_step += 1
            if step % config.log_every == 0 or step == len(batches):
                # A host sync every log_every steps, the inner loop's only one by default (--ema_decay and fp16's
                # loss scaling add one a step); all processes see the same value.
                mean_loss = accelerator.reduce(step_losses[logged_steps:step].mean(), "mean").item()
                logged_steps = step
                if not math.isfinite(mean_loss):
                    raise RunFailed(f"training loss is {mean_loss} at epoch {epoch} step {step}; stopping. "
                                    f"Still safe: {safe}.")
                accelerator.log({"train/loss": mean_loss, "train/lr": lr, "epoch": epoch}, step=global_step)
        train_seconds = time.perf_counter() - epoch_start
        train_loss = accelerator.reduce(step_losses.mean(), "mean").item()

        # DDP runs each forward with rank 0's BatchNorm statistics, but every process's last update of them
        # stays local; taking rank 0's here makes all processes validate (and a resumed run continue) the same
        # model.
        broadcast(list(eval_model.buffers()), from_process=0)
        val = evaluate(eval_model, val_set, rank=rank, world_size=world_size)
        if not math.isfinite(val["loss"]):
            # The training loss is read before each step, so weights that an epoch's last steps blew up show
            # here first; they must not become best.pt or a state to resume from.
            raise RunFailed(f"validation loss is {val['loss']} after epoch {epoch}: the weights diverged; stopping. "
                            f"Still safe: {safe}.")
        val_scalars = scalars(val)
        improved = val["joint_acc"] > best["joint_acc"]
        epochs_done = epoch - start_epoch + 1
        eta = (time.perf_counter() - run_start) / epochs_done * (config.epochs - epoch)
        log.info(f"epoch {epoch:2d}/{config.epochs}  val: {format_metrics(val)}  ({train_seconds:.1f}s train, "
                 f"{time.perf_counter() - epoch_start:.1f}s total, run ETA {tqdm.format_interval(eta)})"
                 f"{'  -> best.pt' if improved else ''}")
        accelerator.log({f"val/{k}": v for k, v in val_scalars.items()} | {"epoch": epoch}, step=global_step)
        # The main process writes alone; a failed write stops every process.
        with all_or_none(accelerator, RunFailed, raise_as=RunFailed):
            if accelerator.is_main_process:
                # started_at and validated_at (Unix seconds) place the epoch between the run's launch and exit:
                # the time to each accuracy, and the time spent outside the epochs (benchmarks/run_tables.py).
                epoch_rows.append({"epoch": epoch, "step": global_step, "lr": lr,
                                   "train_loss": train_loss, "train_seconds": train_seconds,
                                   "started_at": round(started_at, 3), "validated_at": round(time.time(), 3)}
                                  | {f"val_{k}": v for k, v in val_scalars.items()})
                with saving(folder.metrics, safe):
                    atomic_write_text(folder.metrics, "".join(json.dumps(row) + "\n" for row in epoch_rows))
                if improved:
                    with saving(folder.best, safe):
                        save_checkpoint(folder.best, eval_model, train_config=config.to_dict(), epoch=epoch,
                                        val_metrics=val_scalars)
        if improved:
            best = {"epoch": epoch, "joint_acc": val["joint_acc"]}
        # Safe now: best.pt as just written (this epoch's model if it improved), and the previous state.
        with saving(state_folder(folder.checkpoints, epoch), still_safe(best["epoch"], saved_epoch=epoch - 1)):
            save_training_state(accelerator, folder.checkpoints, epoch, global_step, best, config,
                                keep=config.keep_states, ema=ema)
    accelerator.wait_for_everyone()
    log.info(f"training done in {time.perf_counter() - run_start:.1f}s")

    final_report(config, folder, accelerator, test_set, epoch_rows, tracking, global_step, log)
    log.info(f"the model: {folder.best} (python evaluate.py --ckpt {shlex.quote(str(folder.best))})")


def log_launch(log: logging.Logger, accelerator: Accelerator, placement: Placement, config: TrainConfig,
               argv: list[str] | None) -> None:
    """The run's first lines: the command, where it runs and how, and anything that will make it slow or quiet."""
    log.info(f"command: {shlex.join(sys.argv if argv is None else ['train.py', *argv])}")  # argv: from a benchmark
    device = accelerator.device
    log.info(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()}), "
             f"{accelerator.num_processes} process(es), mixed precision: {accelerator.mixed_precision}")
    log.info(f"process started {seconds_since_process_start():.1f}s ago (interpreter, imports, Accelerator"
             f"{', CUDA' if device.type == 'cuda' else ''})")
    if is_compiled(accelerator):
        dynamo = accelerator.state.dynamo_plugin
        log.info(f"torch.compile: backend {dynamo.backend.value.lower()}, mode {dynamo.mode}")
    if placement.note:
        log.info(placement.note)
    if placement.warning:
        log.warning(f"warning: {placement.warning}")
    if config.report_to == "wandb" and not accelerator.log_with:
        log.warning("wandb is not installed: tracking is off (pip install wandb, or --report_to none to silence this)")


def main(argv=None) -> int:
    config = parse_config(argv, __doc__)
    folder = RunFolder(config.output_dir)

    try:
        placement = place_run(config.cpu, config.mixed_precision)
    except PlacementError as err:
        exit_with_error(str(err))
    accelerator = Accelerator(
        cpu=placement.cpu,
        mixed_precision=placement.mixed_precision,
        log_with="wandb" if config.report_to == "wandb" else None,
        step_scheduler_with_optimizer=False,  # the schedule counts this process's steps itself
    )
    refusal = None
    if config.resume_from_checkpoint is None and folder.holds_a_run():
        # Never overwrite a model the user already has: a new run needs a new place. Checked on every process:
        # on nodes that do not share a disk, each holds its own part of a run.
        refusal = (f"{folder.root.resolve()} already holds a run (best.pt or checkpoints/). Continue it with "
                   f"--resume_from_checkpoint latest, or start a new one with --output_dir NEW_DIR.")
    elif accelerator.is_main_process:
        try:
            folder.logs.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            refusal = f"cannot create {folder.logs} ({err.strerror or err})"
    refusal = first_failure(accelerator, refusal)  # every process stops, or none
    if refusal:
        accelerator.end_training()
        sys.exit(f"error: {refusal}" if accelerator.is_main_process else 1)
    log = console_log(folder.logs / "console.log", accelerator.is_main_process)
    log_launch(log, accelerator, placement, config, argv)

    try:
        train(config, folder, accelerator, log)
    except (RunFailed, ResumeError, CaptureFailed) as err:
        log.error(f"error: {err}")
        Tracking.record_failure(accelerator)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: what is kept and how to go on, rather than a traceback
        states = saved_states(folder.checkpoints)
        kept = (f"{states[-1]} is saved: continue with --resume_from_checkpoint latest" if states else
                "no training state was saved yet: start again (in a new --output_dir if this one has a best.pt)")
        log.error(f"error: interrupted; {kept}")
        Tracking.record_failure(accelerator)
        return 130
    except BaseException:  # a bug, out of memory: the traceback follows, and the wandb run is failed
        Tracking.record_failure(accelerator)
        raise
    finally:
        accelerator.end_training()  # closes the trackers and tears down the process group
        for handler in logging.getLogger("adder").handlers:
            handler.close()  # console.log's file
    return 0


if __name__ == "__main__":
    sys.exit(main())
