"""The garbage collector around a start-up (lrdpo_fast/loop/sampler/gc_heap.py): no automatic
collection during the start's imports, the heap frozen for the engine's own collections, and the
collector's state given back (the freeze kept only for an in-process engine, which vLLM freezes
and unfreezes itself; the torchrun layouts' engines in other processes: test_sampler.py)."""

from __future__ import annotations

import gc

import pytest

from lrdpo_fast.loop.sampler.gc_heap import EngineHeap, collection_paused


@pytest.fixture
def unfrozen_heap():
    """The test runs on an unfrozen heap; a freeze found before (a live engine's) is put back."""
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    yield
    gc.unfreeze()
    if frozen:
        gc.freeze()


def test_collection_paused_disables_automatic_collection_and_restores_it():
    assert gc.isenabled()
    with collection_paused():
        assert not gc.isenabled()
        with collection_paused():  # nested: the outer block's state is kept
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collection_paused():
        raise RuntimeError("inside")
    assert gc.isenabled()
    gc.disable()
    try:
        with collection_paused():
            pass
        assert not gc.isenabled()  # a collector disabled by the caller stays disabled
    finally:
        gc.enable()


def test_engine_heap_freezes_the_heap_and_releases_only_its_own_freeze(unfrozen_heap):
    with EngineHeap() as heap:
        assert heap.froze and gc.get_freeze_count() > 0
    assert gc.get_freeze_count() > 0  # kept: an in-process engine unfreezes at its shutdown
    heap.release()
    assert gc.get_freeze_count() == 0
    heap.release()  # once
    with pytest.raises(RuntimeError), EngineHeap():
        raise RuntimeError("the engine did not start")
    assert gc.get_freeze_count() == 0
    gc.freeze()  # someone else's freeze: left alone
    with EngineHeap() as heap:
        assert not heap.froze
    heap.release()
    assert gc.get_freeze_count() > 0  # (the count shrinks as frozen objects die)


ENGINE_SCRIPT = """
import gc, json, sys
import transformers, vllm  # the heap a loop's start has (~700k objects) before its engine
from lrdpo_fast.loop.sampler import VLLMSampler

heap = len(gc.get_objects())
walked = []  # objects in the oldest generation at each full collection during the start

def seen(phase, info):
    if phase == "start" and info["generation"] == 2:
        walked.append(len(gc.get_objects(generation=2)))

gc.callbacks.append(seen)
sampler = VLLMSampler(sys.argv[1], seed=0, dtype="float32", max_model_len=256, enforce_eager=True)
gc.callbacks.remove(seen)
started = {"in_process": sampler.in_process, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
sampler.close()
print(json.dumps({**started, "frozen_after_close": gc.get_freeze_count(), "enabled_after": gc.isenabled(),
                  "heap": heap, "walked": walked}))
"""


def test_an_in_process_engine_start_gives_the_collector_back(tiny_model_dir):
    """After the start the collector runs again, no full collection of the start walked the
    imports' heap, and the heap stays frozen while the in-process engine lives (vLLM's own freeze at the end of its init) and is unfrozen at its shutdown.
    In a process of its own: the session's shared engine and other tests' engines move the
    process-wide freeze."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("vllm")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", ENGINE_SCRIPT, str(tiny_model_dir)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["in_process"] and got["enabled"] and got["enabled_after"]
    assert got["frozen"] > 0 and got["frozen_after_close"] == 0
    # vLLM's own full collections during the start (model load, profile run) walk what the start
    # allocated, not the imports' heap: it was frozen before the engine was built
    assert got["walked"] and max(got["walked"]) < got["heap"] / 4, (got["heap"], got["walked"])
