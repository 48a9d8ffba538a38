import pickle
import re
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import SAFE_WEIGHTS_NAME, DynamoBackend
from safetensors import SafetensorError

from adder import training_state
from adder.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from adder.config import TrainConfig
from adder.training_state import save_training_state
from conftest import CreatesFileWhenUnpickled, needs_dev_full, tiny_net


def save_small(path, **config):
    model = tiny_net(**config)
    save_checkpoint(path, model, train_config={"sum_weight": 1.0}, epoch=3, val_metrics={"joint_acc": 0.5})
    return model


def test_roundtrip_rebuilds_the_model_from_the_file_alone(tmp_path):
    model = save_small(tmp_path / "best.pt", sum_head="concat_probs").eval()
    loaded, ckpt = load_model(tmp_path / "best.pt")
    assert ckpt["epoch"] == 3 and ckpt["val_metrics"]["joint_acc"] == 0.5
    assert loaded.config == model.config and not loaded.training
    images, addends = torch.randn(3, 1, 28, 28), torch.tensor([0, 4, 9])
    for a, b in zip(model(images, addends), loaded(images, addends)):
        torch.testing.assert_close(a, b)
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file is renamed, not left behind"


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mnist-adder", "payload": CreatesFileWhenUnpickled(str(marker))}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        read_checkpoint(evil)
    assert not marker.exists()
    # The same payload as a plain pickle file (not a torch zip) is refused too.
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(CreatesFileWhenUnpickled(str(marker))))
    with pytest.raises(CheckpointError):
        read_checkpoint(plain)
    assert not marker.exists()


@needs_dev_full
def test_a_full_disk_fails_the_save_with_an_os_error_and_keeps_the_old_file(tmp_path):
    save_small(tmp_path / "best.pt")
    old = (tmp_path / "best.pt").read_bytes()
    (tmp_path / ".best.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left on device"):
        save_small(tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == old
    assert not (tmp_path / ".best.pt.tmp").exists(), "the failed temporary file is removed"


@pytest.mark.parametrize("failure", [RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos"),
                                     SafetensorError(f"Error while serializing: {SAFE_WEIGHTS_NAME}")])
def test_a_failed_training_state_save_is_an_os_error(tmp_path, failure):
    # How torch.save and safetensors, under accelerate's save_state, report a write that failed: train.py
    # turns an OSError into one line naming what is still safe.
    class FailingAccelerator:
        is_main_process = is_local_main_process = True
        process_index = 0

        def wait_for_everyone(self):
            pass

        def save_state(self, path):
            raise failure

    with pytest.raises(OSError, match=re.escape(str(failure))):
        save_training_state(FailingAccelerator(), tmp_path, 1, 0, {}, TrainConfig(), keep=2)


def test_a_training_state_is_on_disk_before_it_is_named(tmp_path, monkeypatch):
    # accelerate's save_state does not fsync its files: a machine that stops (a pre-empted VM) could otherwise
    # leave a named state of empty files, and the older states already pruned.
    synced = []
    monkeypatch.setattr(training_state, "sync_to_disk", lambda *paths: synced.append(paths))

    class SavingAccelerator:
        is_main_process = is_local_main_process = True
        process_index, num_processes, mixed_precision = 0, 1, "no"
        state = SimpleNamespace(dynamo_plugin=SimpleNamespace(backend=DynamoBackend.NO))

        def wait_for_everyone(self):
            pass

        def save_state(self, path):
            (tmp_path / "epoch_001.partial").mkdir()
            for name in (SAFE_WEIGHTS_NAME, "optimizer.bin"):
                (tmp_path / "epoch_001.partial" / name).write_bytes(b"saved")

    save_training_state(SavingAccelerator(), tmp_path, 1, 0, {}, TrainConfig(), keep=2)
    partial = tmp_path / "epoch_001.partial"
    files, names = synced  # accelerate's files before progress.json and the rename, then the rename itself
    assert sorted(files) == [partial / SAFE_WEIGHTS_NAME, partial / "optimizer.bin"]
    assert names == (tmp_path,) and (tmp_path / "epoch_001" / "progress.json").is_file()


def test_truncated_file(tmp_path):
    save_small(tmp_path / "best.pt")
    data = (tmp_path / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "cut.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an MNIST Adder checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder: give the best.pt"):
        read_checkpoint(tmp_path)
    # Text the unpickler reads as an unknown opcode ('#'): torch's error would advise weights_only=False.
    (tmp_path / "README.md").write_text("# a project")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as refused:
        read_checkpoint(tmp_path / "README.md")
    assert "weights_only" not in str(refused.value)


def test_a_checkpoint_that_cannot_be_read_is_not_called_damaged(tmp_path, monkeypatch):
    # What a best.pt without read permission gives a user who is not root (root may read any file).
    save_small(tmp_path / "best.pt")

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", refused)
    with pytest.raises(CheckpointError, match=r"best.pt: not allowed to read it$"):
        read_checkpoint(tmp_path / "best.pt")


def test_other_version(tmp_path):
    save_small(tmp_path / "best.pt")
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    torch.save(ckpt | {"format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        read_checkpoint(tmp_path / "future.pt")


def test_incomplete_checkpoint(tmp_path):
    save_small(tmp_path / "best.pt")
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    del ckpt["epoch"]  # evaluate.py reports it: without it, it would fail half-way
    torch.save(ckpt, tmp_path / "no_epoch.pt")
    with pytest.raises(CheckpointError, match="incomplete checkpoint, without epoch"):
        load_model(tmp_path / "no_epoch.pt")


def test_other_architecture(tmp_path):
    save_small(tmp_path / "best.pt")
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    torch.save(ckpt | {"model_config": ckpt["model_config"] | {"widths": [[8, 8], [8, 8], [8]]}}, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        load_model(tmp_path / "mismatch.pt")
    torch.save(ckpt | {"model_config": {"depth": 3}}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        load_model(tmp_path / "unknown.pt")
