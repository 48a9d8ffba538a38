"""adder/step.py on the CPU: the eager forward and backward, and when a CUDA graph is not used (the graph
itself is tests/test_cuda.py's)."""

import copy

import pytest
import torch

from adder.data import DeviceMNIST, load_mnist
from adder.loss import AdderLoss
from adder.step import ForwardBackward, why_eager
from conftest import tiny_net


@pytest.mark.parametrize("device, processes, compiled, no_cuda_graph, reason", [
    ("cuda", 1, False, False, None),
    ("cuda", 1, False, True, "--no_cuda_graph"),
    ("cpu", 1, False, False, "needs a CUDA GPU"),
    ("cpu", 1, False, True, "--no_cuda_graph"),
    ("cuda", 2, False, False, "needs one process"),
    ("cuda", 1, True, False, "torch.compile is on"),
])
def test_the_step_is_a_cuda_graph_with_one_process_on_a_cuda_gpu_without_torch_compile(device, processes, compiled,
                                                                                       no_cuda_graph, reason):
    eager_because = why_eager(torch.device(device), processes, compiled, no_cuda_graph)
    assert eager_because is None if reason is None else reason in eager_because


def test_the_eager_step_leaves_the_gradients_of_the_batch_loss(tiny_mnist):
    data = DeviceMNIST(*load_mnist(tiny_mnist, train=True, download=False))
    model = tiny_net()
    reference = copy.deepcopy(model)
    loss_fn, index = AdderLoss(label_smoothing=0.1), torch.arange(32)
    augment = {"rotate": 10, "shift": 0.1, "zoom": 0.1}
    step = ForwardBackward(model, loss_fn, data, torch.Tensor.backward, seed=3, augment=augment, cuda_graph=False)
    for _ in range(2):  # the second call starts from zero gradients, not from the first call's
        loss = step(index, epoch=5)

    images, addends, digits, sums = data.train_batch(index, 3, 5, augment)
    expected = loss_fn(*reference(images, addends), digits, sums)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
