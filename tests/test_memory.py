"""Freed heap memory goes back to the OS between a client's phases (amole.util.memory)."""

from __future__ import annotations

import sys

import pytest

from amole.util import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only")
def test_freed_small_buffers_go_back_to_the_os() -> None:
    if memory._libc() is None:
        pytest.skip("not glibc")
    # Many blocks below glibc's mmap threshold live in the heap; keeping every 16th pins the heap's top, so
    # freeing the rest leaves free pages that only malloc_trim hands back (what a round's buffers do).
    blocks = [bytearray(64 * 1024) for _ in range(4096)]  # 256 MB
    kept = blocks[::16]
    del blocks
    before = memory.resident_mb()
    assert memory.release_freed_memory()
    after = memory.resident_mb()
    assert before - after > 100, (before, after)
    assert kept  # the pinned blocks stay valid


def test_without_glibc_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.release_freed_memory() is False
