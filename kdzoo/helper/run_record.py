"""``run.json``: what a run was, written into its folder when it starts, so that runs can be compared.

``scripts/collect_results.py`` reads it (without torch): cells of its tables hold only runs whose
``settings`` are identical, and the paper tables take only runs whose settings follow the published
recipe. ``settings`` holds every flag that can change the result (data, schedule, precision, model,
method, loss weights, ...), with the data subsets as ``'full'`` or their size; ``seed`` and ``trial``
tell the repetitions of one setting apart. Paths, logging and worker counts change nothing measured
and are left out (the teacher's checkpoint path is kept, outside ``settings``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kdzoo

RUN_RECORD = "run.json"
FORMAT = 1

# Flags that do not change what is measured: where things are, how often to print, how many workers.
_BOOKKEEPING = frozenset({
    "data_folder", "save_folder", "resume", "print_freq", "tb_freq", "save_freq", "num_workers", "device",
    "seed", "trial", "path_t", "download",
    # fp32 arithmetic up to summation order: runs that differ only here are the same setting
    "channels_last", "compile", "threads", "trust_checkpoint",
})


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return str(value)


def run_settings(options: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The settings that make two runs comparable, from the parsed (and resolved) flags."""
    settings = {key: _json_value(value) for key, value in sorted(options.items()) if key not in _BOOKKEEPING}
    for subset in ("train_subset", "test_subset"):
        if subset in settings and settings[subset] is None:
            settings[subset] = "full"
    settings["world_size"] = world_size  # per-process batch norm statistics depend on it
    return settings


def write_run_record(run_dir: str | Path, options: dict[str, Any], seed: int, world_size: int,
                     resumed: bool) -> Path:
    """Write ``run_dir/run.json`` atomically. A resumed run keeps the record its start wrote (and
    gets one only if it started before records existed); a new run replaces any leftover record of
    a start that never wrote a checkpoint."""
    path = Path(run_dir) / RUN_RECORD
    if resumed and path.exists():
        return path
    record = {
        "format": FORMAT, "kdzoo": kdzoo.__version__, "seed": seed, "trial": _json_value(options.get("trial")),
        "teacher_path": _json_value(options.get("path_t")), "settings": run_settings(options, world_size),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RUN_RECORD}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
