"""Experiment tracking through accelerate's trackers (Weights & Biases), online when logged in."""

from __future__ import annotations

import netrc
import os


def wandb_logged_in() -> bool:
    """True when wandb has credentials: WANDB_API_KEY, or the ~/.netrc entry that `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_init_kwargs(run_dir: str, run_name: str | None) -> dict:
    """Arguments for wandb.init: offline (synced later with `wandb sync`) unless logged in or told otherwise."""
    kwargs = {"dir": run_dir, "name": run_name}
    if "WANDB_MODE" not in os.environ and not wandb_logged_in():
        kwargs["mode"] = "offline"
    return kwargs
