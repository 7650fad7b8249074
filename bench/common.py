"""Shared by the benchmarks: machine description, timing, and the JSON result file."""
from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.artifacts.atomic import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tensorflow as tf  # imported late: callers have already selected Keras 2
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "tensorflow": tf.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def describe_data(folder: str) -> dict:
    """A data folder as its manifest describes it (which data, which settings), not by its path: a
    path names one machine's folder and means nothing in a result file read elsewhere."""
    import json

    import tensorflow as tf
    with tf.io.gfile.GFile(f"{folder}/manifest.json") as f:
        manifest = json.load(f)
    return {"dataset": manifest.get("dataset"), "source": manifest["source"]["name"],
            "config_hash": manifest["config_hash"], "users": manifest["users"], "items": manifest["items"],
            "examples": {split: entry["examples"] for split, entry in manifest["splits"].items()}}


def time_call(fn, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of fn (already warmed up by the caller)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summarize(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"median_ms": 1e3 * statistics.median(ordered),
            "p95_ms": 1e3 * ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
            "n": len(ordered)}


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    return write_json(path, payload)
