"""``loop.quiet.dropped_stderr_lines``: native-level stderr lines are filtered, nothing else lost."""

from __future__ import annotations

import os
import sys

import pytest

from lrdpo_fast.loop.quiet import ENGINE_START_NOISE, dropped_stderr_lines


def test_drops_only_the_named_lines_written_at_the_fd_level(capfd):
    with dropped_stderr_lines(ENGINE_START_NOISE):
        # as vLLM's C++ writes it: straight to file descriptor 2, not through sys.stderr
        os.write(2, b"[W1201 utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy for memory\n")
        os.write(2, b"a real problem\n")
        print("python-level line", file=sys.stderr)
        print("stdout is untouched")
    out, err = capfd.readouterr()
    assert "NUMA" not in err
    assert sorted(err.splitlines()) == ["a real problem", "python-level line"]
    assert out == "stdout is untouched\n"


def test_lines_come_back_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="engine failed"):
        with dropped_stderr_lines(("noise",)):
            os.write(2, b"why it failed\n")
            os.write(2, b"some noise here\n")
            raise RuntimeError("engine failed")
    _, err = capfd.readouterr()
    assert err == "why it failed\n"


def test_a_process_without_stderr_is_left_alone(monkeypatch):
    real_dup = os.dup

    def closed(fd):
        if fd == 2:
            raise OSError(9, "Bad file descriptor")
        return real_dup(fd)

    monkeypatch.setattr(os, "dup", closed)
    with dropped_stderr_lines(ENGINE_START_NOISE):
        ran = True
    assert ran
