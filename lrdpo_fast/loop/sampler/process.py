"""What an in-process engine start changes in this process, and the blocks that set and restore
it: the RNGs and torch's thread hook (``ProcessState``), torch threads (``Threads``) and
environment variables (``Env``)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping

import torch


class ProcessState:
    """What an in-process vLLM engine changes globally and the sampler puts back: the RNGs,
    ``torch.set_num_threads`` (replaced by the CPU worker) and the torch thread count."""

    def __init__(self) -> None:
        self.set_num_threads = torch.set_num_threads
        self.threads = torch.get_num_threads()
        self.torch_rng = torch.random.get_rng_state()
        self.cuda_rng = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )
        self.py_rng = random.getstate()
        try:
            import numpy as np

            self.np_rng = np.random.get_state()
        except ImportError:  # pragma: no cover
            self.np_rng = None

    def restore(self) -> None:
        torch.set_num_threads = self.set_num_threads
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.random.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.py_rng)
        if self.np_rng is not None:
            import numpy as np

            np.random.set_state(self.np_rng)


class Threads:
    """Torch intra-op threads set to ``n`` for a block on the CPU backend, then put back (nothing
    on CUDA or when ``n`` is None). The in-process CPU engine runs on the caller's torch threads
    (vLLM's own attempt to set them is a no-op in-process): on small models and shared cores one
    thread samples several times faster, because OpenMP threads that share a core spin-wait for
    each other (measured 5-8x CPU per sample with 2 threads on the 2 shared cores here)."""

    def __init__(self, n: int | None = 1) -> None:
        self.n = n

    def __enter__(self):
        self.threads = None if self.n is None or torch.cuda.is_available() else torch.get_num_threads()
        if self.threads is not None and self.threads != self.n:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.threads is not None and self.threads != self.n:
            torch.set_num_threads(self.threads)
        return False


class Env:
    """Set environment variables for the duration of a block, then put the old values back."""

    def __init__(self, set_: Mapping[str, str] | None = None, unset: Iterable[str] = ()) -> None:
        self.set_, self.unset, self.old = dict(set_ or {}), list(unset), {}

    def __enter__(self):
        for k in [*self.set_, *self.unset]:
            self.old[k] = os.environ.get(k)
        for k in self.unset:
            os.environ.pop(k, None)
        os.environ.update(self.set_)
        return self

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False
