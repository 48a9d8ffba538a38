"""Resumable training state: accelerate's save_state, one folder per epoch, made complete before it is named.

Each state is saved into `epoch_NNN.partial/` and renamed to `epoch_NNN/` only once every file is written,
so a crash during a save leaves no folder that looks complete. Only the newest `keep` states are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

_STATE_NAME = re.compile(r"^epoch_(\d+)$")
PROGRESS_FILE = "progress.json"


def saved_states(checkpoints_dir: Path) -> list[Path]:
    """Complete states, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    states = [p for p in checkpoints_dir.iterdir() if _STATE_NAME.match(p.name) and (p / PROGRESS_FILE).is_file()]
    return sorted(states, key=lambda p: int(_STATE_NAME.match(p.name).group(1)))


def save_training_state(accelerator: Accelerator, checkpoints_dir: Path, epoch: int, global_step: int, keep: int):
    final = checkpoints_dir / f"epoch_{epoch:03d}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a run that died while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its part (each saves its own RNG state)
    if accelerator.is_main_process:
        (partial / PROGRESS_FILE).write_text(json.dumps({"epoch": epoch, "global_step": global_step}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in saved_states(checkpoints_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def resolve_state(resume_from: str, checkpoints_dir: Path) -> Path:
    """'latest' -> the newest complete state in checkpoints_dir; otherwise a path to a state folder."""
    if resume_from == "latest":
        states = saved_states(checkpoints_dir)
        if not states:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no saved training state in {checkpoints_dir}")
        return states[-1]
    path = Path(resume_from)
    if not (path / PROGRESS_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a complete training state folder")
    return path


def load_training_state(accelerator: Accelerator, state_dir: Path) -> dict:
    """Restore model, optimizer, scheduler and RNGs; returns {'epoch', 'global_step'} of the saved state."""
    accelerator.load_state(str(state_dir))
    return json.loads((state_dir / PROGRESS_FILE).read_text())
