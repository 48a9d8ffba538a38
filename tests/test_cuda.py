"""The GPU path: the same pairs and augmentation as on the CPU, and training runs with and without the CUDA graph.
Skipped without CUDA."""

import copy
import json

import pytest
import torch

from adder.data import DeviceMNIST, load_mnist, random_warp, train_addends, train_batches
from adder.loss import AdderLoss
from adder.step import ForwardBackward
from conftest import TINY_MODEL, run_cli, tiny_net

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
    console = (tmp_path / "logs" / "console.log").read_text()
    assert "cuda" in console.splitlines()[1]
    assert "cuDNN's algorithms: timed per shape (cudnn.benchmark)" in console  # the default on a CUDA GPU
    evaluated = json.loads(run_cli(["evaluate.py", "--ckpt", str(tmp_path / "best.pt"), "--data_dir",
                                    str(tiny_mnist), "--json"]).stdout.strip().splitlines()[-1])
    assert evaluated["pairs"] == report["pairs"] == 510
    assert evaluated["joint_acc"] == report["joint_acc"]


@pytest.fixture
def deterministic_convolutions():
    """cuDNN's deterministic algorithms, without TF32: two computations of the same steps then differ only by
    fp32 rounding (on an H200, with TF32 convolutions, eight steps left a first-layer weight beyond 1e-4)."""
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = True, False, False
    yield
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = saved


def test_a_step_replayed_from_a_cuda_graph_trains_as_the_eager_step_does(tiny_mnist, deterministic_convolutions):
    data = DeviceMNIST(*load_mnist(tiny_mnist, train=True, download=False), device="cuda")
    eager_model = tiny_net().cuda().to(memory_format=torch.channels_last)
    graph_model = copy.deepcopy(eager_model)
    runs = []
    for model, cuda_graph in ((eager_model, False), (graph_model, True)):
        step = ForwardBackward(model, AdderLoss(label_smoothing=0.1), data, torch.Tensor.backward, seed=0,
                               augment={"rotate": 10, "shift": 0.1, "zoom": 0.1}, cuda_graph=cuda_graph)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        losses = []
        for epoch in (1, 2):  # a new epoch: new addends and warps, read by the graph from its epoch tensor
            for index in train_batches(len(data), 64, seed=0, epoch=epoch, rank=0, world_size=1, device="cuda")[:3] \
                    + [torch.arange(40, device="cuda")]:  # a shorter batch, which runs eagerly beside the graph
                losses.append(step(index, epoch).item())
                optimizer.step()
        runs.append((losses, model.state_dict()))
    (eager_losses, eager_state), (graph_losses, graph_state) = runs
    assert step.graph is not None
    torch.testing.assert_close(graph_losses, eager_losses, rtol=1e-4, atol=1e-5)
    # Weights and BatchNorm statistics: no trace of the warm-up steps (three extra BatchNorm updates, or a
    # step on the wrong epoch's pairs, would move them by far more than these bounds).
    for name, value in eager_state.items():
        torch.testing.assert_close(graph_state[name], value, rtol=1e-3, atol=1e-4,
                                   msg=lambda message, name=name: f"{name}: {message}")


# The default's precision; fp16, whose loss scale the graph reads and the optimiser step updates in place; and
# a moving average of the weights, updated after each replayed step.
@pytest.mark.parametrize("settings", [["--mixed_precision", "bf16"], ["--mixed_precision", "fp16"],
                                      ["--mixed_precision", "bf16", "--ema_decay", "0.9"]])
def test_train_py_with_a_cuda_graph_trains_as_without(tiny_mnist, tmp_path, settings):
    runs = {}
    for name, flags in (("eager", ["--no_cuda_graph"]), ("graph", [])):
        # cuDNN's heuristics choose the same algorithms for both; timing them could choose differently.
        run_cli(["train.py", "--data_dir", str(tiny_mnist), "--output_dir", str(tmp_path / name), "--epochs", "2",
                 "--val_size", "100", "--batch_size", "32", "--report_to", "none", "--no_cudnn_benchmark", *settings,
                 *flags, *TINY_MODEL])
        logs = tmp_path / name / "logs"
        runs[name] = (json.loads((logs / "metrics.jsonl").read_text().splitlines()[0]),
                      json.loads((logs / "test_metrics.json").read_text()))
    logs = {name: (tmp_path / name / "logs" / "console.log").read_text() for name in runs}
    assert "training step: a CUDA graph, captured at the first batch" in logs["graph"]
    assert "training step: eager (--no_cuda_graph)" in logs["eager"]
    assert all("cuDNN's algorithms: heuristics (--no_cudnn_benchmark)" in log for log in logs.values())
    # The same kernels in the same order: only cuDNN's non-deterministic reductions may tell them apart, and
    # choosing best.pt out of two epochs of a tiny run can magnify that, so the bounds are loose.
    (eager_epoch, eager_test), (graph_epoch, graph_test) = runs["eager"], runs["graph"]
    assert graph_epoch["train_loss"] == pytest.approx(eager_epoch["train_loss"], rel=1e-2)
    assert graph_test["pairs"] == 510 and abs(graph_test["joint_acc"] - eager_test["joint_acc"]) <= 0.06
