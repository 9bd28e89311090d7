"""One ``/metrics`` for all the workers: each worker's counts, pooled by whichever worker answers.

Why not prometheus-client's multiprocess mode: flowgate's metrics are loop metrics
(:mod:`proxy.metrics`: plain Python values, a counter update is one attribute increment, and the
compiled text path adds to the chunk-gap histogram's bucket list from C), and multiprocess mode
would put an mmap write behind a lock under every one of them, per chunk. Instead:

- every worker writes a snapshot of its values (``worker-<serial>.json``, a fresh serial per
  worker started) to the supervisor's private directory every :data:`SNAPSHOT_S` and once more
  after it drained, when it stops;
- the supervisor writes its own (``supervisor.json``: ``flowgate_workers``, restarts, reloads);
- when a worker dies, the supervisor folds its last snapshot's counters and histograms into
  ``archive.json`` (gauges are dropped: a dead worker's open streams are gone) and deletes the
  file, so nothing counted goes backwards and the directory does not grow;
- the worker answering ``/metrics`` sums its own live values with every other file.

Gauges say how they combine (``merge`` on the metric): ``sum`` (streams open) or ``local`` (the
answering worker's own value, for one every worker reads from the store). Another worker's values
are at most :data:`SNAPSHOT_S` old; a worker killed outright (SIGKILL) loses what it counted since
its last snapshot. The per-process collectors (``process_*``, ``python_*``) are not pooled (as in
multiprocess mode): with workers, ``/metrics`` carries flowgate's own series only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import metrics as m

SNAPSHOT_S = 1.0
ARCHIVE = "archive.json"
SUPERVISOR = "supervisor.json"
KEEP_ABSORBED = 256  # serials remembered in the archive (a reader skips their files if it still sees one)

Values = dict[str, dict[tuple[str, ...], object]]  # metric name -> labels -> value | [counts, sum]


class _Pool:
    directory: Path | None = None  # set in a worker process: where the snapshots live
    serial: int = 0


POOL = _Pool()


def snapshot(kinds: tuple[str, ...] = ("counter", "gauge", "histogram")) -> dict[str, list]:
    """This process's non-zero values, as JSON-ready rows: ``[labels, value]`` or ``[labels, counts, sum]``."""
    out: dict[str, list] = {}
    for metric in m.LOOP_METRICS:
        if metric.kind not in kinds:
            continue
        rows = []
        for labels, child in list(metric._children.items()):
            if metric.kind == "histogram":
                if child.sum or any(child.counts):  # type: ignore[attr-defined]
                    rows.append([list(labels), list(child.counts), child.sum])  # type: ignore[attr-defined]
            elif child.value:  # type: ignore[attr-defined]
                rows.append([list(labels), child.value])  # type: ignore[attr-defined]
        if rows:
            out[metric.name] = rows
    return out


def write_json(path: Path, data: object) -> None:
    """Replace ``path`` whole (a reader sees the old file or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # gone meanwhile (its worker was just folded into the archive), or never written


def worker_file(directory: Path, serial: int) -> Path:
    return directory / f"worker-{serial}.json"


# --- in a worker ---------------------------------------------------------------------------------

def start_worker(directory: Path, serial: int) -> None:
    POOL.directory, POOL.serial = directory, serial


def save() -> None:
    if POOL.directory is not None:
        write_json(worker_file(POOL.directory, POOL.serial), {"serial": POOL.serial, "metrics": snapshot()})


async def keep_saving() -> None:
    """Every :data:`SNAPSHOT_S` until cancelled (the worker saves once more when it has drained)."""
    while True:
        with contextlib.suppress(OSError):
            save()
        await asyncio.sleep(SNAPSHOT_S)


def exposition() -> bytes:
    """The text format of ``/metrics``: this process's registry alone, or every worker's pooled."""
    if POOL.directory is None:
        return generate_latest()
    return generate_latest(_Pooled(pooled(POOL.directory, POOL.serial)))  # type: ignore[arg-type]


# --- pooling -------------------------------------------------------------------------------------

def _add(into: Values, metrics: dict[str, list], skip_local: bool) -> None:
    by_name = {metric.name: metric for metric in m.LOOP_METRICS}
    for name, rows in metrics.items():
        metric = by_name.get(name)
        if metric is None or (skip_local and metric.merge == "local"):
            continue
        values = into.setdefault(name, {})
        for row in rows:
            labels = tuple(row[0])
            if metric.kind == "histogram":
                counts, total = values.get(labels, ([0] * len(row[1]), 0.0))  # type: ignore[misc]
                if len(counts) == len(row[1]):
                    values[labels] = ([a + b for a, b in zip(counts, row[1], strict=True)], total + row[2])
            else:
                values[labels] = values.get(labels, 0.0) + row[1]  # type: ignore[operator]


def pooled(directory: Path, own_serial: int | None) -> Values:
    """This process's live values plus every other snapshot in ``directory`` (the archive last: a
    worker file the archive already absorbed is skipped, whichever order the two were written in)."""
    into: Values = {}
    own = snapshot()
    for metric in m.LOOP_METRICS:  # every known series, zeros included (dashboards show 0, not "no data")
        values = into.setdefault(metric.name, {})
        for labels in list(metric._children):
            values[labels] = ([0] * len(metric.bounds), 0.0) if metric.kind == "histogram" else 0.0  # type: ignore[attr-defined]
    _add(into, own, skip_local=False)
    workers = {}
    for path in directory.glob("worker-*.json"):
        data = read_json(path)
        if data.get("serial") is not None and data["serial"] != own_serial:
            workers[data["serial"]] = data.get("metrics", {})
    archive = read_json(directory / ARCHIVE)
    absorbed = set(archive.get("absorbed", []))
    for serial, metrics in workers.items():
        if serial not in absorbed:
            _add(into, metrics, skip_local=True)
    _add(into, archive.get("metrics", {}), skip_local=True)
    _add(into, read_json(directory / SUPERVISOR).get("metrics", {}), skip_local=True)
    return into


class _Pooled:
    """What ``generate_latest`` asks of a registry: the pooled families."""

    def __init__(self, values: Values) -> None:
        self.values = values

    def collect(self):
        for metric in m.LOOP_METRICS:
            values = self.values.get(metric.name, {})
            if metric.kind == "histogram":
                family = HistogramMetricFamily(metric.name, metric.documentation, labels=metric.labelnames)
                for labels, (counts, total) in values.items():  # type: ignore[misc]
                    cumulative, buckets = 0, []
                    for le, count in zip(metric._le, counts, strict=True):  # type: ignore[attr-defined]
                        cumulative += count
                        buckets.append((le, cumulative))
                    family.add_metric(list(labels), buckets, total)
            else:
                cls = GaugeMetricFamily if metric.kind == "gauge" else CounterMetricFamily
                family = cls(metric.name, metric.documentation, labels=metric.labelnames)
                for labels, value in values.items():
                    family.add_metric(list(labels), value)
            yield family


def reset_supervisor_series() -> None:
    """In a worker just forked: the supervisor's own series start at zero here (they are the
    supervisor's to report, from its file)."""
    for metric in (m.WORKERS, m.WORKER_RESTARTS, m.RELOADS):
        for child in metric._children.values():
            child.value = 0.0  # type: ignore[attr-defined]


# --- in the supervisor ---------------------------------------------------------------------------

def absorb(directory: Path, serial: int) -> None:
    """Fold a dead worker's last counters and histograms into the archive, then delete its file."""
    path = worker_file(directory, serial)
    data = read_json(path)
    archive = read_json(directory / ARCHIVE)
    kept: Values = {}
    _add(kept, archive.get("metrics", {}), skip_local=True)
    counted = {metric.name for metric in m.LOOP_METRICS if metric.kind != "gauge"}
    _add(kept, {k: v for k, v in data.get("metrics", {}).items() if k in counted}, skip_local=True)
    rows = {name: [[list(labels), *(list(v) if isinstance(v, tuple) else [v])] for labels, v in values.items()]
            for name, values in kept.items()}
    absorbed = [*archive.get("absorbed", []), serial][-KEEP_ABSORBED:]
    write_json(directory / ARCHIVE, {"absorbed": absorbed, "metrics": rows})
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def save_supervisor(directory: Path) -> None:
    write_json(directory / SUPERVISOR, {"metrics": snapshot()})
