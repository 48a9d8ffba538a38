"""The GPU path: the same pairs and augmentation as on the CPU, and a bf16 training run. Skipped without CUDA."""

import json

import pytest
import torch

from adder.data import DeviceMNIST, load_mnist, random_warp, train_addends, train_batches
from conftest import TINY_MODEL, run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_addends_and_shuffles_do_not_depend_on_the_device():
    index = torch.arange(60_000)
    assert torch.equal(train_addends(index.cuda(), seed=42, epoch=3).cpu(), train_addends(index, seed=42, epoch=3))
    cpu = train_batches(1000, 64, seed=0, epoch=2, rank=1, world_size=2)
    gpu = train_batches(1000, 64, seed=0, epoch=2, rank=1, world_size=2, device="cuda")
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))


def test_augmentation_matches_the_cpu(tiny_mnist):
    data = DeviceMNIST(*load_mnist(tiny_mnist, train=True, download=False))
    index = torch.arange(64)
    cpu = random_warp(data.images[index].unsqueeze(1).float() / 255, index, 0, 1, 10, 0.1, 0.1)
    gpu = random_warp(data.images[index].cuda().unsqueeze(1).float() / 255, index.cuda(), 0, 1, 10, 0.1, 0.1)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_bf16_training_on_the_gpu_and_fp32_evaluation_agree(tiny_mnist, tmp_path):
    run_cli(["train.py", "--data_dir", str(tiny_mnist), "--output_dir", str(tmp_path), "--epochs", "2",
             "--mixed_precision", "bf16", "--val_size", "100", "--batch_size", "32", "--report_to", "none",
             *TINY_MODEL])
    report = json.loads((tmp_path / "logs" / "test_metrics.json").read_text())
    assert "cuda" in (tmp_path / "logs" / "console.log").read_text().splitlines()[1]
    evaluated = json.loads(run_cli(["evaluate.py", "--ckpt", str(tmp_path / "best.pt"), "--data_dir",
                                    str(tiny_mnist), "--json"]).stdout.strip().splitlines()[-1])
    assert evaluated["pairs"] == report["pairs"] == 510
    assert evaluated["joint_acc"] == report["joint_acc"]
