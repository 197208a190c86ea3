"""CUDA-graph capture of a whole sampling loop.

A K-step sampler launches tens of small kernels per step; at batch 1 the launch overhead, not
the arithmetic, sets the latency. :class:`CapturedSampler` records the loop once into a CUDA
graph with static input buffers and replays it with one launch. Value checks are skipped during
capture automatically (:func:`diffrl_ref.fast.checking`), so validate inputs before capturing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import DomainError


class CapturedSampler:
    """``fn(*inputs) -> Tensor`` captured as a CUDA graph for inputs of fixed shapes.

    Calling copies the new inputs into the static buffers, replays the graph and returns the
    static output (clone it if you keep it past the next call).
    """

    def __init__(self, fn: Callable[..., Tensor], example_inputs: Sequence[Tensor], warmup: int = 3) -> None:
        if not torch.cuda.is_available():
            raise DomainError("fast.graphs", "CUDA-graph capture needs a CUDA device")
        if not all(t.is_cuda for t in example_inputs):
            raise DomainError("fast.graphs", "every example input must be a CUDA tensor")
        self.static_inputs = [t.clone() for t in example_inputs]
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmup):  # lets lazy initialisation (cuBLAS handles, autotuning) happen outside capture
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_output = fn(*self.static_inputs)

    def __call__(self, *inputs: Tensor) -> Tensor:
        if len(inputs) != len(self.static_inputs):
            raise DomainError("fast.graphs", f"expected {len(self.static_inputs)} inputs, got {len(inputs)}")
        for buf, x in zip(self.static_inputs, inputs, strict=True):
            if buf.shape != x.shape:
                raise DomainError("fast.graphs", f"captured for shape {tuple(buf.shape)}, got {tuple(x.shape)}")
            buf.copy_(x)
        self.graph.replay()
        return self.static_output
