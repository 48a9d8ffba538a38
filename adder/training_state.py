"""Resumable training state: accelerate's save_state, one folder per epoch, made complete before it is named.

Each state is saved into `epoch_NNN.partial/` and renamed to `epoch_NNN/` only once every file is written,
so a crash during a save leaves no folder that looks complete. Only the newest `keep` states are kept, and
none after the epoch saved last: a run resumed from an earlier state drops those of the run it left.
Beside accelerate's files, progress.json records where the run stood and the settings it ran with: a
resumed run must use the same ones, or its schedule, data order or weights would not fit the saved state.
resume_run loads a state back on every process, or on none, with the best validation the resumed run must
beat to replace best.pt. With --ema_decay, ema.pt holds the moving average. It is not handed to accelerate's
register_for_checkpointing, whose file load_state unpickles with weights_only=False: a training state
folder is untrusted input, like best.pt, so every file in it is read as tensors only.

accelerate's own checkpoint naming (ProjectConfiguration's automatic_checkpoint_naming, total_limit) is
not used: it deletes the oldest state before the new one is written, and names a folder before it is
complete.

Several nodes: the main process writes the model, optimiser and schedule, every process its random
states, and each node's first process names (and prunes) the folders on its own disk. Resuming needs the
complete state on every node: a shared filesystem, or the main node's folder copied to the others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import SAFE_WEIGHTS_NAME, WEIGHTS_NAME, DynamoBackend, gather_object
from safetensors import SafetensorError
from torch.optim.swa_utils import AveragedModel

from adder.checkpoint import CheckpointError, read_checkpoint
from adder.config import TrainConfig
from adder.distributed import all_or_none, first_failure, from_main_process
from adder.errors import first_line
from adder.files import atomic_write_text, sync_to_disk

_STATE_NAME = re.compile(r"^epoch_(\d+)$")
PROGRESS_FILE = "progress.json"
EMA_FILE = "ema.pt"
# Settings that shape the saved state or the rest of the run: the schedule's length, the model's tensors,
# the optimiser's state, the data order. The others (logging, output, tracking) may change. The precision, the
# number of processes and torch.compile must match too (check_settings), but are not flags of TrainConfig alone.
MUST_MATCH = ("epochs", "batch_size", "widths", "sum_head", "sum_hidden", "optimizer", "lr", "weight_decay",
              "sum_weight", "label_smoothing", "ema_decay", "seed", "val_size", "no_augment", "rotate", "shift",
              "zoom")


def is_compiled(accelerator: Accelerator) -> bool:
    """Whether the model is run through torch.compile (accelerate launch --dynamo_backend ...). Accelerate's
    saved training state then names the weights with torch.compile's `_orig_mod.` prefix, so such a state
    resumes only compiled (with any backend or mode), and an uncompiled one only uncompiled."""
    return accelerator.state.dynamo_plugin.backend != DynamoBackend.NO


class ResumeError(RuntimeError):
    """A training state that cannot be resumed by this command; the message says why and what to do."""


def has_weights(state: Path) -> bool:
    """Whether save_state wrote model weights here, under accelerate's names (a second model gets _1...)."""
    return any(any(state.glob(f"{Path(name).stem}*{Path(name).suffix}")) for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME))


def is_complete(state: Path) -> bool:
    """progress.json and the model's weights: a folder the main process finished writing."""
    return (state / PROGRESS_FILE).is_file() and has_weights(state)


def state_folder(checkpoints_dir: Path, epoch: int) -> Path:
    """Where the state of `epoch` is saved: checkpoints/epoch_012."""
    return checkpoints_dir / f"epoch_{epoch:03d}"


def state_epoch(state: Path) -> int:
    """checkpoints/epoch_012 -> 12."""
    return int(_STATE_NAME.match(state.name).group(1))


def saved_states(checkpoints_dir: Path) -> list[Path]:
    """Named (fully written) states, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    states = [p for p in checkpoints_dir.iterdir() if _STATE_NAME.match(p.name) and (p / PROGRESS_FILE).is_file()]
    return sorted(states, key=state_epoch)


def save_training_state(accelerator: Accelerator, checkpoints_dir: Path, epoch: int, global_step: int, best: dict,
                        config: TrainConfig, keep: int, ema: AveragedModel | None = None) -> None:
    final = state_folder(checkpoints_dir, epoch)
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_local_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run that died while saving
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(str(partial))
        if ema is not None and accelerator.is_main_process:  # the same on every process, like the weights
            torch.save(ema.state_dict(), partial / EMA_FILE)
    except torch.distributed.DistError:  # a peer process gone, not a failed write
        raise
    except OSError as err:
        failure = err.strerror or str(err)
    except (RuntimeError, SafetensorError) as err:  # how torch.save and safetensors report a failed write
        failure = first_line(err, with_type=True)
    # Every process has written its part (each saves its own RNG state), or all stop: one that stopped alone
    # would leave the others waiting for it at the next barrier.
    if failure := first_failure(accelerator, failure):
        raise OSError(failure)
    # The main process names the state; so does each other node's first process where the main process's
    # files are not on its disk (no shared filesystem). Decided before anything is renamed.
    names_it = accelerator.is_main_process or (accelerator.is_local_main_process and not has_weights(partial))
    accelerator.wait_for_everyone()
    failure = None
    if names_it:
        progress = {"epoch": epoch, "global_step": global_step, "best": best, "processes": accelerator.num_processes,
                    "mixed_precision": accelerator.mixed_precision, "compiled": is_compiled(accelerator),
                    "settings": {name: getattr(config, name) for name in MUST_MATCH}}
        try:
            # accelerate's files (it does not fsync them) on disk before progress.json says they are complete
            sync_to_disk(*partial.rglob("*"))
            atomic_write_text(partial / PROGRESS_FILE, json.dumps(progress))  # on disk before the rename
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            sync_to_disk(checkpoints_dir)  # the new name, before older states go
        except OSError as err:
            failure = err.strerror or str(err)
        else:  # the new state is complete: an old one that fails to go only takes disk space
            # States after this epoch were left by the run this one resumed behind, from an earlier state:
            # `latest` must not pick them up. Of the rest, the newest `keep` stay.
            states = saved_states(checkpoints_dir)
            later = [state for state in states if state_epoch(state) > epoch]
            for old in later + [state for state in states if state not in later][:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    if failure := first_failure(accelerator, failure):
        raise OSError(failure)


def resolve_state(resume_from: str, checkpoints_dir: Path) -> Path:
    """'latest' -> the newest complete state in checkpoints_dir; otherwise a path to a state folder."""
    if resume_from == "latest":
        states = [s for s in saved_states(checkpoints_dir) if is_complete(s)]
        if not states:
            raise ResumeError(f"--resume_from_checkpoint latest: no saved training state in {checkpoints_dir}"
                              + (" (this node holds only part of one: resuming on several nodes needs the whole "
                                 "checkpoints/ folder on each)" if saved_states(checkpoints_dir) else ""))
        return states[-1]
    path = Path(resume_from)
    if not path.is_dir():
        raise ResumeError(f"--resume_from_checkpoint {path}: {'not a' if path.exists() else 'no such'} folder (the "
                          f"states are in {checkpoints_dir}; or give latest)")
    if not is_complete(path):
        raise ResumeError(f"--resume_from_checkpoint {path}: not a complete training state folder")
    return path


def changed_settings(saved: dict, config: TrainConfig) -> list[str]:
    """The settings of MUST_MATCH whose saved value differs from the config's."""
    return [name for name in MUST_MATCH if saved.get(name) != getattr(config, name)]


def check_settings(progress: dict, config: TrainConfig, processes: int, *, precision: str, compiled: bool) -> None:
    """Refuse to resume with a setting that differs from the saved run's, naming the first one that does."""
    saved = progress.get("settings", {})
    changed = [(f"--{name}", saved.get(name), getattr(config, name)) for name in changed_settings(saved, config)]
    if progress.get("processes") != processes:
        changed.append(("the number of processes", progress.get("processes"), processes))
    # The precision as the run resolved it (flag, accelerate config or the CPU's choice): another one would end
    # differently from the run that was stopped, and fp16 alone saves a loss-scaler state.
    if progress.get("mixed_precision", precision) != precision:
        changed.append(("--mixed_precision", progress["mixed_precision"], precision))
    if changed:
        flag, then, now = changed[0]
        raise ResumeError(f"cannot resume: the saved run used {flag} {then}, this command {now}. "
                          f"Resume with the same setting, or start a new run with --output_dir NEW_DIR.")
    saved_compiled = progress.get("compiled", False)
    if saved_compiled != compiled:
        how = {True: "compiled the model (--dynamo_backend)", False: "did not compile the model"}
        raise ResumeError(f"cannot resume: the saved run {how[saved_compiled]}, this command "
                          f"{'does' if compiled else 'does not'}; the saved weights' names differ. Resume with the "
                          f"same accelerate launch settings, or start a new run with --output_dir NEW_DIR.")


def load_training_state(accelerator: Accelerator, state_dir: Path, config: TrainConfig,
                        ema: AveragedModel | None = None) -> dict:
    """Check the settings, then restore model, optimizer, scheduler, RNGs and the moving average; returns the
    saved progress ({'epoch', 'global_step', 'best', ...}). Any failure is a ResumeError: a changed setting,
    or a file of the state missing or damaged on this process's disk."""
    try:
        progress = json.loads((state_dir / PROGRESS_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ResumeError(f"cannot read {state_dir / PROGRESS_FILE} ({first_line(err, with_type=True)})") from err
    if not (isinstance(progress, dict) and isinstance(progress.get("settings"), dict)
            and {"epoch", "global_step", "best"} <= progress.keys()):
        raise ResumeError(f"{state_dir / PROGRESS_FILE}: not the progress file train.py writes")
    check_settings(progress, config, accelerator.num_processes, precision=accelerator.mixed_precision,
                   compiled=is_compiled(accelerator))
    try:
        accelerator.load_state(str(state_dir))
        if ema is not None:
            ema.load_state_dict(torch.load(state_dir / EMA_FILE, map_location="cpu", weights_only=True))
    except Exception as err:  # accelerate and torch raise many kinds: only the message says what failed
        raise ResumeError(f"cannot load the training state {state_dir} ({first_line(err, with_type=True)})") from err
    return progress


def resume_run(accelerator: Accelerator, config: TrainConfig, checkpoints_dir: Path, best_path: Path,
               ema: AveragedModel | None = None) -> tuple[Path, dict, dict]:
    """The state --resume_from_checkpoint names, loaded, its settings checked against this command's: (its
    folder, its progress.json, the best validation the rest of the run must beat to replace best.pt).

    Each process reads the state from its own disk (nodes need not share one): all must find it, the same
    one, and load it, or all stop with a ResumeError."""
    with all_or_none(accelerator, ResumeError, raise_as=ResumeError):
        state_dir = resolve_state(config.resume_from_checkpoint, checkpoints_dir)
    names = gather_object([state_dir.name])  # the same state on every node, not a stale copy on one
    if len(set(names)) > 1:
        found = ", ".join(f"{name} on process {rank}" for rank, name in enumerate(names))
        raise ResumeError(f"the processes found different training states ({found}): resuming on several nodes "
                          f"needs the same checkpoints/ folder on each")
    with all_or_none(accelerator, ResumeError, raise_as=ResumeError):
        progress = load_training_state(accelerator, state_dir, config, ema)
    return state_dir, progress, best_to_beat(accelerator, config, best_path, progress["best"])


def best_to_beat(accelerator: Accelerator, config: TrainConfig, best_path: Path, saved_best: dict) -> dict:
    """The saved state's best validation, or best.pt's if higher (a run resumed from an older epoch). A state
    whose best model is missing, or a best.pt of other settings, cannot resume: the run could not end with
    its own test report."""
    def read_best() -> dict | None:
        if not best_path.exists():
            return None
        checkpoint = read_checkpoint(best_path)
        try:
            other = changed_settings(checkpoint["train_config"], config)
            best = {"epoch": checkpoint["epoch"], "joint_acc": checkpoint["val_metrics"]["joint_acc"]}
        except (KeyError, TypeError, AttributeError) as err:
            raise ResumeError(f"{best_path}: no training settings or validation metrics in it: not a best.pt of "
                              f"train.py") from err
        if other:
            raise ResumeError(f"{best_path} was trained with another {', '.join(f'--{name}' for name in other)}: "
                              f"it is not this run's model; move it away, or resume in the run's own --output_dir")
        return best

    kept = from_main_process(accelerator, read_best, (CheckpointError, ResumeError), raise_as=ResumeError)
    if kept is None:
        if saved_best["epoch"]:
            raise ResumeError(f"the saved state's best model (epoch {saved_best['epoch']}) is not in {best_path}: "
                              f"resume in the run's own --output_dir, or copy its best.pt there")
        return saved_best
    return max(saved_best, kept, key=lambda best: best["joint_acc"])
