"""best.pt: a self-describing model file, written atomically and read as untrusted input.

A checkpoint holds everything needed to rebuild the model from the file alone: the format version, the
model config, the weights, and for the record the training config, epoch and validation metrics.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from adder.errors import first_line, would_call
from adder.files import atomic_write
from adder.model import AdderNet, ModelConfig

FORMAT = "mnist-adder"
FORMAT_VERSION = 2
# What save_checkpoint writes besides the format, and what train.py and evaluate.py read back.
CONTENTS = ("model_config", "model_state", "train_config", "epoch", "val_metrics")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why."""


def save_checkpoint(path, model: AdderNet, *, train_config: dict, epoch: int, val_metrics: dict) -> None:
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": train_config,
        "epoch": epoch,
        "val_metrics": val_metrics,
    }
    # Serialised in memory first: torch.save reports a failed write to a file as a RuntimeError, a plain
    # write as the OSError it is.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, loaded with weights_only=True (no code from the file runs)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: give the best.pt file that train.py wrote (checkpoints/epoch_NNN "
                              f"are training states, for train.py --resume_from_checkpoint)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    not_readable = f"{path}: not a readable PyTorch checkpoint (truncated or another kind of file)"
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:  # the file's permissions, not its contents (a truncated file is another OSError)
        raise CheckpointError(f"{path}: not allowed to read it") from None
    except Exception as err:  # a file that is not a torch checkpoint can fail in any part of the unpickler
        # weights_only accepts only tensors and plain containers: a pickle that would call anything else ends here.
        if would_call(err):
            raise CheckpointError(f"{path}: refused to load: {first_line(err)}") from err
        raise CheckpointError(not_readable) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an MNIST Adder checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    missing = [key for key in CONTENTS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, without {', '.join(missing)}")
    return ckpt


def load_model(path: str | Path) -> tuple[AdderNet, dict]:
    """Rebuild the model from the checkpoint alone; returns (model in eval mode, checkpoint dict)."""
    ckpt = read_checkpoint(path)
    try:
        model = AdderNet(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model_state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the model it describes ({first_line(err)})") from err
    return model.eval(), ckpt
