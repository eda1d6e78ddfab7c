"""Bounded prefetch: produce the next items in a background thread while the current is used."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_DONE, _ITEM, _ERROR = range(3)


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while one background thread produces up to ``depth`` ahead.

    Memory stays bounded by ``depth + 2`` items (queued, being produced, being used). An
    exception raised while producing is re-raised here; closing the generator (``with
    contextlib.closing(...)``) stops the thread.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    box: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: int, value: Any) -> bool:
        while not stop.is_set():
            try:
                box.put((kind, value), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(_ITEM, item):
                    return
        except BaseException as exc:
            put(_ERROR, exc)
        else:
            put(_DONE, None)

    thread = threading.Thread(target=produce, name="medfail-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = box.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
