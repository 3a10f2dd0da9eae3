"""Keep known, harmless lines of native libraries out of a quiet run's terminal.

vLLM's CPU backend prints ``Warning: NUMA binding: Using MEMBIND policy ...`` from C++ (torch's
logging, which reads ``TORCH_CPP_LOG_LEVEL`` only when torch is first imported) every time an
engine starts. ``dropped_stderr_lines`` captures file descriptor 2 around such a call and writes
back everything except the lines it was told to drop, so nothing else is lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence

ENGINE_START_NOISE = ("NUMA binding: Using MEMBIND policy",)


@contextlib.contextmanager
def dropped_stderr_lines(patterns: Sequence[str]) -> Iterator[None]:
    """Inside the block, the process's stderr (fd 2, native code included) goes to a temporary
    file; on exit (also on an exception) every line that contains none of ``patterns`` (str) is
    written back to stderr, in order."""
    fd = 2  # native code writes here whatever sys.stderr is
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):  # no usable stderr (closed, or sys.stderr is None)
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not any(p in line for p in patterns)]
            if kept:
                os.write(fd, "".join(kept).encode("utf-8"))
