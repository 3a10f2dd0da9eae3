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


def test_an_in_process_engine_start_gives_the_collector_back(vllm_sampler):
    """After the start the collector runs again; the heap stays frozen while the in-process
    engine lives (vLLM's own freeze at the end of its init, unfrozen at its shutdown)."""
    assert vllm_sampler.in_process
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
