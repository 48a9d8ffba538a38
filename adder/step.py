"""A training step's forward and backward: the batch made on the device, the loss, the gradients.

On a CUDA GPU (one process, no torch.compile; not with --no_cuda_graph), they are captured once in a CUDA
graph and then replayed: the step's few hundred small kernels start with one call instead of one Python
dispatch each, which is where a network this small spends its time on a GPU (epochs 2.6-3.9x faster than
eager on an H200, both with cuDNN's heuristics, 2026-11-28: docs/experiments.md). A graph replays fixed
memory, so what changes from step to step is written into tensors it reads in place: the batch's image
indices and the epoch (which keys the addends and the augmentation). The optimiser's step stays outside
the graph: the one-cycle schedule changes the learning rate and momentum every step, and torch.optim.SGD
reads them as Python numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from adder.data import DeviceMNIST
from adder.errors import first_line

# Eager steps on a side stream before the capture, so that cuDNN and cuBLAS have made their choices and
# workspaces: a graph cannot capture that set-up.
WARMUP_STEPS = 3


class CaptureFailed(RuntimeError):
    """The step could not be captured in a CUDA graph; the message says how to run it eagerly."""


def why_eager(device: torch.device, processes: int, compiled: bool, no_cuda_graph: bool) -> str | None:
    """Why this run's step is launched kernel by kernel, or None: it is replayed from a CUDA graph."""
    if no_cuda_graph:
        return "--no_cuda_graph"
    if device.type != "cuda":
        return "a CUDA graph needs a CUDA GPU"
    if processes > 1:
        return "a CUDA graph needs one process: DDP's gradient exchange is not captured"
    if compiled:
        return "torch.compile is on: its step is not captured here (reduce-overhead makes CUDA graphs of its own)"
    return None


class ForwardBackward:
    """Forward and backward of one batch, leaving the gradients in the parameters' .grad for the optimiser.

    `backward` is accelerator.backward (loss scaling, gradient accumulation); with `cuda_graph`, the batches
    of the first call's size are replayed from a CUDA graph and other sizes (an epoch's last, shorter batch)
    run eagerly, writing their gradients into the graph's tensors.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, data: DeviceMNIST, backward: Callable, *,
                 seed: int, augment: dict | None, cuda_graph: bool):
        self.model, self.loss_fn, self.data, self.backward = model, loss_fn, data, backward
        self.seed, self.augment = seed, augment
        self.cuda_graph = cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        # The graph's inputs, written before a replay and read in place by it (the epoch only when it changes:
        # graph_epoch_value is what graph_epoch holds); its loss, which each replay overwrites; and the
        # parameters' gradients, which it writes.
        self.graph_index: torch.Tensor | None = None
        self.graph_epoch = torch.zeros((), dtype=torch.int64, device=data.device) if cuda_graph else None
        self.graph_epoch_value: int | None = None
        self.graph_loss: torch.Tensor | None = None
        self.graph_grads: list[torch.Tensor] = []

    def __call__(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The batch's loss, detached; from a graph, a tensor the next step overwrites: use it at once."""
        if self.cuda_graph and self.graph is None:
            self.capture(index, epoch)
        if self.graph is not None and len(index) == len(self.graph_index):
            if epoch != self.graph_epoch_value:  # once an epoch, off the per-step path
                self.check_gradients()
                self.set_graph_epoch(epoch)
            self.graph_index.copy_(index)
            self.graph.replay()
            return self.graph_loss
        # Eager. Once a graph exists, the gradients must stay in the tensors it writes: zeroed, not dropped.
        self.model.zero_grad(set_to_none=self.graph is None)
        return self.launch(index, epoch)

    def launch(self, index: torch.Tensor, epoch: int | torch.Tensor) -> torch.Tensor:
        """The step's kernels, launched one by one: an eager step, a warm-up, or what the capture records."""
        images, addends, digits, sums = self.data.train_batch(index, self.seed, epoch, self.augment)
        digit_logits, sum_logits = self.model(images.contiguous(memory_format=torch.channels_last), addends)
        loss = self.loss_fn(digit_logits, sum_logits, digits, sums)
        self.backward(loss)
        # Detached: no autograd graph of a warm-up step outlives it into the capture.
        return loss.detach()

    def capture(self, index: torch.Tensor, epoch: int) -> None:
        """Records the step for batches of len(index) images. The warm-up steps leave no trace: the
        BatchNorm statistics they moved are put back, and their gradients are dropped before the capture
        allocates the ones the graph writes."""
        self.graph_index = index.clone()
        self.set_graph_epoch(epoch)
        statistics = [buffer.clone() for buffer in self.model.buffers()]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.model.zero_grad(set_to_none=True)
                    self.launch(self.graph_index, self.graph_epoch)
            torch.cuda.current_stream().wait_stream(side)
            self.model.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it writes
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.graph_loss = self.launch(self.graph_index, self.graph_epoch)
            except RuntimeError as err:  # the same step ran eagerly just above: the capture itself failed
                raise CaptureFailed(f"capturing the training step in a CUDA graph failed ({first_line(err)}); "
                                    f"--no_cuda_graph launches its kernels one by one instead") from err
        finally:
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), statistics):
                    buffer.copy_(saved)
        self.graph = graph
        self.graph_grads = [p.grad for p in self.model.parameters()]

    def set_graph_epoch(self, epoch: int) -> None:
        self.graph_epoch.fill_(epoch)
        self.graph_epoch_value = epoch

    def check_gradients(self) -> None:
        """A zero_grad(set_to_none=True) elsewhere would leave the replays writing gradients nobody reads."""
        if any(p.grad is not grad for p, grad in zip(self.model.parameters(), self.graph_grads)):
            raise RuntimeError("the parameters' .grad are no longer the tensors the CUDA graph writes")
