"""Peak bytes of live tensors, counted exactly: a steady memory measure for benchmarks on a CPU.

On CUDA, ``torch.cuda.max_memory_allocated`` counts the bytes of live tensors and is the same from run to run. On a
CPU there is no such counter, and the peak resident set size (RSS) also counts what the C allocator keeps after
tensors are freed: identical runs of the same code differed by ~70-140 MiB in benchmarks/vs_trl.py. `LiveTensorBytes`
counts what ``max_memory_allocated`` would: every tensor storage created by a PyTorch operation while it is active
(forward, autograd's backward, optimizer, loss) is added when created and subtracted when it is freed (a weak
reference's callback), and ``peak`` is the largest total. Storages created before it became active (the models'
weights) are not counted; their gradients and optimizer states, created inside, are.

Not seen: scratch memory an operator allocates and frees inside its own C++ code (it is never a tensor returned to
Python), and tensors made without an operator call (``torch.from_numpy``). It slows every operator call by a Python
function call, so time and memory are measured in separate runs.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes() as memory: ...`` then ``memory.peak``: the most bytes of tensor storages created
    inside and alive at the same time; ``memory.live``: those still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: set[weakref.ref] = set()

    def _freed(self, size: int, ref: weakref.ref) -> None:
        self.live -= size
        self._refs.discard(ref)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        self._refs.add(weakref.ref(storage, lambda ref, size=size: self._freed(size, ref)))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        outputs = out if isinstance(out, (tuple, list)) and len(returns) == len(out) else (out,)
        for declared, value in zip(returns, outputs, strict=False):
            # A return that aliases an input (a view, an in-place or `out=` result) is not new memory; counting it
            # would add e.g. the weights the optimizer updates in place, created before this was active.
            if declared.alias_info is None:
                tree_map_only(torch.Tensor, self._track, value)
        return out
