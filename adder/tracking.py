"""Experiment tracking: what a run records in Weights & Biases, through accelerate's wandb tracker.

A run holds
    config    the resolved settings (defaults filled in) and, under `environment`, the torch, accelerate and
              wandb versions, the device, the number of processes and the mixed precision
    history   train.py's curves (train loss and learning rate, validation metrics per epoch), then at the end
              the test metrics, a table of test predictions, the digit head's confusion matrix as wandb's
              interactive chart and the figures of adder/plots.py
    summary   the best validation joint accuracy while training (val/joint_acc, its maximum); at the end
              best.pt's epoch and validation metrics (best_val/*) and the test metrics (test/*, test_tta/*)
    artifact  best.pt, type "model", with its epoch and validation metrics as metadata (off with --no_log_model)

Only the main process writes to the run. The run goes online when wandb is logged in and its server
answers; otherwise it is recorded offline under logs/wandb/ and `wandb sync` uploads it later. A resumed
training run is a new wandb run, its steps continuing the first one's; a run stopped by an error (or
Ctrl-C) is marked failed.
"""

from __future__ import annotations

import http.client
import logging
import platform
import urllib.error
import urllib.request
from pathlib import Path

import accelerate
import torch

from adder.data import DeviceMNIST
from adder.metrics import scalars
from adder.model import NUM_DIGITS

PROJECT = "mnist-adder"
SERVER_TIMEOUT = 3.0  # seconds to wait for the wandb server before recording the run offline
TABLE_MISTAKES, TABLE_RIGHT_ANSWERS = 200, 100  # at most this many rows of each in the predictions table

log = logging.getLogger(__name__)


def server_answers(url: str, timeout: float = SERVER_TIMEOUT) -> bool:
    """Whether a server answers HTTP at `url` within `timeout` seconds, with any status."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # an answer, if only an error status
    except (OSError, ValueError, http.client.HTTPException):  # refused, timed out, no such host, not HTTP
        return False
    return True


def wandb_init_kwargs(run_dir: str, run_name: str | None) -> tuple[dict, str | None]:
    """Arguments for wandb.init, and the reason when they make the run offline.

    Offline unless logged in with a server that answers within SERVER_TIMEOUT. wandb's own checks take
    longer: online, wandb.init waits 90 seconds (its init_timeout) for an unreachable server and then
    fails; wandb.login(verify=True) takes 10 seconds to give up. A mode the user chose (WANDB_MODE,
    `wandb offline`, a settings file) stands.
    """
    import wandb

    kwargs = {"dir": run_dir, "name": run_name}
    # Offline, the run's own line says where the run is and how to upload it: silent drops the run's console
    # lines, its sync tips, its "syncing is set to `offline` in this directory" (untrue of a fallback) and its
    # warnings; wandb's process-wide warnings (termwarn) stay.
    offline = {"mode": "offline", "settings": wandb.Settings(silent=True)}
    settings = wandb.setup().settings  # environment variables and settings files, resolved by wandb
    if settings.mode != "online":
        return kwargs | (offline if settings.mode == "offline" else {}), None
    # The server first: wandb.login looks the account up on it to greet the user, and would wait for it.
    if not server_answers(settings.base_url):
        return kwargs | offline, f"{settings.base_url} did not answer"
    # wandb's own check for credentials (API key variable, identity token, .netrc, settings) that never
    # asks for a key.
    if not wandb.login(prompt=False, verify=False):
        return kwargs | offline, "not logged in"
    return kwargs, None


def environment(accelerator) -> dict:
    """Where the run executes, for the run's config."""
    import wandb

    device = accelerator.device
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "wandb": wandb.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }


def predictions_table(answers: dict[str, torch.Tensor], test_set: DeviceMNIST, seed: int = 0):
    """A wandb.Table of the one-addend `answers` (one_addend_predictions) with a wrong digit or sum, then a
    random sample of right ones."""
    import wandb

    wrong = ((answers["predicted digit"] != answers["digit"])
             | (answers["predicted sum"] != answers["sum"]))
    mistakes, right = wrong.nonzero().flatten(), (~wrong).nonzero().flatten()
    sample = torch.randperm(len(right), generator=torch.Generator().manual_seed(seed))[:TABLE_RIGHT_ANSWERS]
    rows = torch.cat([mistakes[:TABLE_MISTAKES], right[sample].sort().values])
    images = test_set.images[rows.to(test_set.device)].cpu().numpy()
    return wandb.Table(
        columns=["test image", "image", *answers, "right"],
        data=[[i, wandb.Image(image), *(column[i].item() for column in answers.values()), not wrong[i].item()]
              for i, image in zip(rows.tolist(), images)],
    )


def digit_confusion_chart(answers: dict[str, torch.Tensor]):
    """wandb's interactive confusion matrix of the digit head, each test image counted once."""
    import wandb

    return wandb.plot.confusion_matrix(
        y_true=answers["digit"].tolist(), preds=answers["predicted digit"].tolist(),
        class_names=[str(digit) for digit in range(NUM_DIGITS)], title="digit head: each test image once")


def model_artifact(run_id: str, checkpoint: Path, saved: dict):
    """best.pt (`checkpoint`, whose contents are `saved`) as a wandb artifact of type "model", described by
    its epoch and validation metrics."""
    import wandb

    artifact = wandb.Artifact(f"model-{run_id}", type="model", metadata={
        "epoch": saved["epoch"], "val_metrics": saved["val_metrics"], "model_config": saved["model_config"]})
    artifact.add_file(str(checkpoint), name=checkpoint.name)
    return artifact


class Tracking:
    """The run's record in Weights & Biases. Every process starts it (accelerate's init_trackers runs on all
    of them) and may call its methods; only the main process writes, and nothing is written when tracking
    is off (--report_to none, or wandb not installed)."""

    def __init__(self, run=None, log_model: bool = True):
        self.run = run  # the wandb run, on the main process of a tracked run; None elsewhere
        self.log_model = log_model

    @classmethod
    def start(cls, accelerator, config: dict, *, logs_dir: Path, run_name: str | None = None,
              log_model: bool = True) -> Tracking:
        """Starts the wandb run of a training run with `config` (its resolved settings); an offline run
        says where it is recorded and how to upload it."""
        if not accelerator.log_with:
            return cls()
        init_kwargs, offline_reason = (wandb_init_kwargs(str(logs_dir), run_name) if accelerator.is_main_process
                                       else ({}, None))
        accelerator.init_trackers(PROJECT, config=config | {"environment": environment(accelerator)},
                                  init_kwargs={"wandb": init_kwargs})
        if not accelerator.is_main_process:
            return cls()
        run = accelerator.get_tracker("wandb", unwrap=True)
        if run.offline:
            reason = f" ({offline_reason})" if offline_reason else ""
            log.info(f"wandb: recording the run offline{reason}; upload it with: wandb sync {run.settings.sync_dir}")
        # The runs table can sort by the best epoch's accuracy while the run goes on, not the last one's.
        run.define_metric("val/joint_acc", summary="max")
        return cls(run, log_model)

    @staticmethod
    def record_failure(accelerator) -> None:
        """Marks the wandb run of a run that stopped with an error as failed (exit code 1): accelerate's
        end_training would finish it as a success. Does nothing where no run was started."""
        for tracker in accelerator.trackers if accelerator.is_main_process else []:
            if tracker.name == "wandb":
                tracker.run.finish(exit_code=1)
                accelerator.trackers.remove(tracker)  # end_training would finish it again
                return

    def log_test_results(self, step: int, test: dict, shifted: dict, *, checkpoint: Path, saved: dict,
                         answers: dict[str, torch.Tensor], test_set: DeviceMNIST, figures: dict[str, Path]) -> None:
        """The end of a run: the test results of best.pt (at `checkpoint`, whose contents are `saved`), plain
        and averaged over shifts; its one-addend `answers` on `test_set` as a table and a confusion chart;
        the run's figures (their PNG files, by name); best.pt itself."""
        if self.run is None:
            return
        import wandb

        results = ({f"test/{name}": value for name, value in scalars(test).items()}
                   | {f"test_tta/{name}": value for name, value in scalars(shifted).items()})
        media = {"test/predictions": predictions_table(answers, test_set),
                 "test/digit_confusion": digit_confusion_chart(answers)}
        images = {f"figures/{name}": wandb.Image(str(path)) for name, path in figures.items()}
        self.run.log(results | media | images, step=step)
        self.run.summary.update({"best_val/epoch": saved["epoch"]}
                                | {f"best_val/{name}": value for name, value in saved["val_metrics"].items()})
        if self.log_model:
            self.run.log_artifact(model_artifact(self.run.id, checkpoint, saved), aliases=["best"])
