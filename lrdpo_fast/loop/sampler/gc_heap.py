"""The garbage collector during a start-up.

Importing torch, transformers and vLLM leaves ~700k long-lived objects tracked by the collector,
and each full collection walks all of them (0.15-0.45 s here). A start pays many: the automatic
ones that the imports' allocations trigger, and the explicit ones vLLM runs while it starts an
engine (two in the model load, one after the profile run, three where it freezes the heap at the
end of its init). Measured on the loop's start (bench_loop's config): ~5 s of collection in a
~11 s launch-to-first-sample.

``collection_paused``: no automatic collection inside a block (an explicit ``gc.collect()`` still
runs). ``EngineHeap``: the heap frozen (``gc.freeze``) from the start of an engine's
construction, so vLLM's own collections walk only what the start allocates. An in-process engine
freezes the heap itself at the end of its init and unfreezes it at shutdown (vLLM's
``EngineCore``), so the freeze is kept for it; otherwise (an engine in another process, or a
start that failed) the heap is unfrozen again. Garbage alive at the freeze is collected once
the heap is unfrozen (the engine's shutdown).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection inside the block; the collector's state is put back."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class EngineHeap:
    """``gc.freeze()`` on entry (unless the heap already holds frozen objects: then nothing);
    ``release()`` unfreezes what it froze. The caller releases unless the engine runs in this
    process (module docstring)."""

    def __enter__(self) -> EngineHeap:
        self.froze = gc.get_freeze_count() == 0
        if self.froze:
            gc.freeze()
        return self

    def release(self) -> None:
        """Unfreeze the heap if this block froze it (once)."""
        if self.froze:
            self.froze = False
            gc.unfreeze()

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is not None:
            self.release()
        return False
