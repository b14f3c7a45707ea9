"""Run uvicorn and record every garbage collector pause, for ``http_overhead.py --gc-stats``.

Usage: python benchmarks/uvicorn_gc.py UVICORN_ARGS...

It takes the same arguments as ``uvicorn``. On exit it writes JSON to the file
named by ``GC_STATS_FILE``. Per generation, the file has the number of
collections, their total and longest pause in milliseconds and the objects
they freed. For each full (generation 2) collection it also has the start
time and the pause. If ``GC_FREEZE_AFTER_S`` is set, it calls ``gc.freeze()``
that many seconds after start, which moves every object alive then (the
imported modules and the app) out of reach of later collections.
"""

from __future__ import annotations

import atexit
import collections
import gc
import json
import os
import signal
import sys
import threading
import time
from typing import Any

_started: dict[int, float] = {}
_pauses_ms: dict[int, list[float]] = collections.defaultdict(list)
_collected: collections.Counter[int] = collections.Counter()
_frozen: dict[str, Any] = {}
# Wall-clock start (seconds since the epoch) and pause of each full
# collection, so a caller can pick those inside its measured window.
_full_collections: list[tuple[float, float]] = []
MAX_FULL_COLLECTIONS_KEPT = 10_000


def _on_gc(phase: str, info: dict[str, int]) -> None:
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.perf_counter()
        return
    started = _started.pop(generation, None)
    if started is not None:
        pause_ms = (time.perf_counter() - started) * 1000.0
        _pauses_ms[generation].append(pause_ms)
        if generation == 2 and len(_full_collections) < MAX_FULL_COLLECTIONS_KEPT:
            _full_collections.append((time.time() - pause_ms / 1000.0, pause_ms))
    _collected[generation] += info["collected"]


def _freeze() -> None:
    gc.freeze()
    _frozen["objects"] = gc.get_freeze_count()


def _write_stats(path: str) -> None:
    stats: dict[str, Any] = {
        "generations": {},
        "frozen_objects": _frozen.get("objects"),
        "full_collections": _full_collections,
    }
    for generation, pauses in sorted(_pauses_ms.items()):
        stats["generations"][str(generation)] = {
            "collections": len(pauses),
            "total_ms": sum(pauses),
            "max_ms": max(pauses),
            "collected": _collected[generation],
        }
    with open(path, "w") as output:
        json.dump(stats, output)


def main() -> None:
    path = os.environ.get("GC_STATS_FILE")
    if not path:
        sys.exit("uvicorn_gc.py: GC_STATS_FILE is not set; set it to the JSON file to write")

    gc.callbacks.append(_on_gc)
    atexit.register(_write_stats, path)

    freeze_after = os.environ.get("GC_FREEZE_AFTER_S")
    if freeze_after:
        timer = threading.Timer(float(freeze_after), _freeze)
        timer.daemon = True
        timer.start()

    # uvicorn shuts down gracefully on SIGTERM and then raises the signal
    # again with the handler that was there before it started. Exiting from
    # that handler, not dying from the signal, lets the atexit hook run.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    from uvicorn.main import main as uvicorn_main

    sys.argv = ["uvicorn", *sys.argv[1:]]
    uvicorn_main()


if __name__ == "__main__":
    main()
