"""Experiment tracking through accelerate's trackers (Weights & Biases), online when logged in."""

from __future__ import annotations

import os


def wandb_init_kwargs(run_dir: str, run_name: str | None) -> dict:
    """Arguments for wandb.init: offline (synced later with `wandb sync`) unless logged in or told otherwise.

    wandb.login(prompt=False) is wandb's own check for credentials (API key variable, identity token,
    .netrc, settings; any host) that never asks for a key.
    """
    import wandb

    kwargs = {"dir": run_dir, "name": run_name}
    if "WANDB_MODE" not in os.environ and not wandb.login(prompt=False, verify=False):
        kwargs["mode"] = "offline"
    return kwargs
