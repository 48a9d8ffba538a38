"""evaluate.py on your own image, and its errors; the plotting and LR-finder modules on tiny data."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adder.checkpoint import save_checkpoint
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


def digit_png(path, background, size=(28, 28)):
    pixels = np.full(size[::-1], background, np.uint8)
    pixels[6:22, 12:16] = 255 - background  # a "1"
    Image.fromarray(pixels).save(path)
    return path


def test_own_image_prediction(ckpt, tmp_path):
    result = run_cli(["evaluate.py", "--ckpt", str(ckpt), "--image", str(digit_png(tmp_path / "one.png", 0)),
                      "--addend", "7", "--json"])
    prediction = json.loads(result.stdout)
    assert 0 <= prediction["digit"] <= 9 and 0 <= prediction["sum"] <= 18 and prediction["addend"] == 7
    assert 0 < prediction["digit_prob"] <= 1 and 0 < prediction["sum_prob"] <= 1


def test_own_image_prediction_with_shift_averaging(ckpt, tmp_path):
    image = str(digit_png(tmp_path / "one.png", 0))
    plain, shifted = (json.loads(run_cli(["evaluate.py", "--ckpt", str(ckpt), "--image", image, "--addend", "7",
                                          "--json", *tta]).stdout) for tta in ([], ["--tta"]))
    assert 0 <= shifted["digit"] <= 9 and 0 < shifted["digit_prob"] <= 1 and 0 < shifted["sum_prob"] <= 1
    assert shifted["digit_prob"] != plain["digit_prob"]


def test_light_background_is_inverted(ckpt, tmp_path):
    dark = run_cli(["evaluate.py", "--ckpt", str(ckpt), "--image", str(digit_png(tmp_path / "d.png", 0)),
                    "--addend", "3", "--json"]).stdout
    light = run_cli(["evaluate.py", "--ckpt", str(ckpt), "--image", str(digit_png(tmp_path / "l.png", 255)),
                     "--addend", "3", "--json"]).stdout
    assert json.loads(dark) == json.loads(light)


@pytest.mark.parametrize("make_input, addend, message", [
    (lambda d: digit_png(d / "big.png", 0, size=(32, 28)), "3", "image is 32x28, expected 28x28"),
    (lambda d: d / "missing.png", "3", "no such image file"),
    (lambda d: (d / "text.png").write_text("not an image") and d / "text.png", "3", "not a readable image"),
    (lambda d: digit_png(d / "ok.png", 0), "10", "--addend must be between 0 and 9"),
    (lambda d: digit_png(d / "ok.png", 0), "-1", "--addend must be between 0 and 9"),
    (lambda d: digit_png(d / "ok.png", 0), "three", "--addend: invalid int value"),
])
def test_bad_own_inputs_get_one_clear_error(ckpt, tmp_path, make_input, addend, message):
    result = run_cli(["evaluate.py", "--ckpt", str(ckpt), "--image", str(make_input(tmp_path)), "--addend", addend],
                     check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


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
                                steps=40, batch_size=64, end_lr=10.0)
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
