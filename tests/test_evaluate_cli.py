"""evaluate.py's errors about checkpoints and data; the plotting and LR-finder modules on tiny data.
(evaluate.py on your own pictures: test_digit_image.py.)"""

import pytest
import torch
from PIL import Image

from adder.checkpoint import save_checkpoint
from adder.config import TrainConfig
from adder.lr_find import lr_range_test, suggest
from adder.data import DeviceMNIST, load_mnist
from adder.model import AdderNet, ModelConfig
from conftest import run_cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.manual_seed(0)
    model = AdderNet(ModelConfig(widths=[[4, 4], [8, 8], [8]]))
    save_checkpoint(path, model, train_config={"sum_weight": 1.0, "label_smoothing": 0.0}, epoch=1,
                    val_metrics={"joint_acc": 0.1})
    return path


@pytest.mark.parametrize("write, message", [
    (lambda p: None, "no such checkpoint file"),
    (lambda p: p.write_bytes(b"\x80\x04garbage"), "refused to load"),
    (lambda p: p.write_text("just text"), "not a readable PyTorch checkpoint"),
])
def test_bad_checkpoints_get_one_clear_error(tmp_path, write, message):
    path = tmp_path / "best.pt"
    write(path)
    result = run_cli(["evaluate.py", "--ckpt", str(path)], check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_data_gets_one_clear_error(ckpt, tmp_path):
    # A proxy on a closed local port: the download fails at once, with or without a real network.
    dead_proxy = "http://127.0.0.1:9"
    result = run_cli(["evaluate.py", "--ckpt", str(ckpt), "--data_dir", str(tmp_path), "--cpu"], check=False,
                     env={"http_proxy": dead_proxy, "https_proxy": dead_proxy, "HTTP_PROXY": dead_proxy,
                          "HTTPS_PROXY": dead_proxy, "no_proxy": "", "NO_PROXY": ""})
    assert result.returncode != 0 and "error: MNIST is not in" in result.stderr and "downloading it failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_lr_range_test_sweeps_and_suggests(tiny_mnist):
    images, labels = load_mnist(tiny_mnist, train=True, download=False)
    torch.manual_seed(0)
    lrs, losses = lr_range_test(AdderNet(ModelConfig(widths=[[4, 4], [8, 8], [8]])), DeviceMNIST(images, labels),
                                TrainConfig(batch_size=64), steps=40, end_lr=10.0)
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    assert lrs[0] <= suggest(lrs, losses) <= lrs[-1]


def test_plots_module_writes_the_figures(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    run_cli(["train.py", "--cpu", "--data_dir", str(tiny_mnist), "--output_dir", str(out), "--epochs", "1",
             "--val_size", "100", "--batch_size", "64", "--report_to", "none", "--widths", "4,4", "8,8", "8"])
    for name in ("curves.png", "test_predictions.png", "confusion.png"):
        (out / "logs" / name).unlink()
    run_cli(["-m", "adder.plots", str(out), "--data_dir", str(tiny_mnist)])
    for name in ("curves.png", "test_predictions.png", "confusion.png"):
        assert Image.open(out / "logs" / name).size[0] > 500
