"""One /metrics for all workers: snapshots pooled by sum, ``local`` gauges from the answering worker,
dead workers' counts kept in the archive (never counted twice, never lost), the supervisor's own."""

from __future__ import annotations

import json

import pytest

from proxy import metrics as m
from proxy.front import pooled
from proxy.front.pooled import ARCHIVE, SUPERVISOR, absorb, worker_file, write_json
from proxy.front.pooled import pooled as pool

LABELS = ("pooltest", "bad_request")  # REJECTIONS{dialect, reason}: a series no other test touches


def other_worker(directory, serial: int, rejections: float, streams: float, balance: float, gaps: list[int]):
    write_json(worker_file(directory, serial), {"serial": serial, "metrics": {
        "flowgate_rejections_total": [[list(LABELS), rejections]],
        "flowgate_streams_open": [[["pooltest", "wf"], streams]],
        "flowgate_account_balance_credits": [[["pooltest"], balance]],
        "flowgate_chunk_gap_seconds": [[["pooltest"], gaps, 0.5]],
    }})


@pytest.fixture
def own():
    """This process's live values for the test's series (dropped after)."""
    rej = m.REJECTIONS.labels(*LABELS)
    streams = m.STREAMS_OPEN.labels("pooltest", "wf")
    bal = m.ACCOUNT_BALANCE.labels("pooltest")
    gap = m.CHUNK_GAP.labels("pooltest")
    rej.value, streams.value, bal.value = 2.0, 1.0, 700.0
    gap.counts[:] = [0] * len(gap.counts)
    gap.counts[0], gap.sum = 1, 0.0001
    yield
    for metric, labels in ((m.REJECTIONS, LABELS), (m.STREAMS_OPEN, ("pooltest", "wf")),
                           (m.ACCOUNT_BALANCE, ("pooltest",)), (m.CHUNK_GAP, ("pooltest",))):
        m.forget(metric, *labels)  # other tests read these metrics' label sets


def test_counters_and_sum_gauges_add_up_and_a_local_gauge_is_the_answering_workers(tmp_path, own):
    n = len(m.CHUNK_GAP.bounds)
    other_worker(tmp_path, 7, rejections=3, streams=4, balance=999, gaps=[2] + [0] * (n - 1))
    got = pool(tmp_path, own_serial=1)
    assert got["flowgate_rejections_total"][LABELS] == 5
    assert got["flowgate_streams_open"][("pooltest", "wf")] == 5
    assert got["flowgate_account_balance_credits"][("pooltest",)] == 700  # every worker reads the same store
    counts, total = got["flowgate_chunk_gap_seconds"][("pooltest",)]
    assert counts[0] == 3 and total == pytest.approx(0.5001)


def test_a_dead_workers_counts_stay_and_its_gauges_go(tmp_path, own):
    n = len(m.CHUNK_GAP.bounds)
    other_worker(tmp_path, 7, rejections=3, streams=4, balance=999, gaps=[2] + [0] * (n - 1))
    absorb(tmp_path, 7)
    assert not worker_file(tmp_path, 7).exists()
    got = pool(tmp_path, own_serial=1)
    assert got["flowgate_rejections_total"][LABELS] == 5  # kept: nothing counted goes backwards
    assert got["flowgate_streams_open"][("pooltest", "wf")] == 1  # its open streams died with it
    assert got["flowgate_chunk_gap_seconds"][("pooltest",)][0][0] == 3
    other_worker(tmp_path, 8, rejections=10, streams=0, balance=0, gaps=[0] * n)
    absorb(tmp_path, 8)  # a second death adds to the archive
    assert pool(tmp_path, own_serial=1)["flowgate_rejections_total"][LABELS] == 15


def test_a_file_the_archive_already_absorbed_is_not_counted_twice(tmp_path, own):
    n = len(m.CHUNK_GAP.bounds)
    other_worker(tmp_path, 7, rejections=3, streams=4, balance=999, gaps=[0] * n)
    saved = worker_file(tmp_path, 7).read_text()
    absorb(tmp_path, 7)
    worker_file(tmp_path, 7).write_text(saved)  # as a reader may still see it, between the two writes
    assert pool(tmp_path, own_serial=1)["flowgate_rejections_total"][LABELS] == 5


def test_the_supervisors_series_are_its_own_and_junk_files_are_ignored(tmp_path, own):
    write_json(tmp_path / SUPERVISOR, {"metrics": {"flowgate_workers": [[[], 3]],
                                                   "flowgate_worker_restarts_total": [[["1"], 2]]}})
    (tmp_path / "worker-9.json").write_text("{not json")
    (tmp_path / ARCHIVE).write_text(json.dumps({"metrics": {"flowgate_no_such_metric": [[[], 1]]}}))
    got = pool(tmp_path, own_serial=1)
    assert got["flowgate_workers"][()] == 3
    assert got["flowgate_worker_restarts_total"][("1",)] == 2
    assert got["flowgate_rejections_total"][LABELS] == 2


def test_a_worker_exposes_the_pool_and_a_lone_process_its_registry(tmp_path, own):
    assert b"process_cpu_seconds_total" in pooled.exposition()  # one process: prometheus-client's own text
    pooled.start_worker(tmp_path, 1)
    try:
        other_worker(tmp_path, 7, rejections=3, streams=4, balance=999, gaps=[0] * len(m.CHUNK_GAP.bounds))
        text = pooled.exposition().decode()
    finally:
        pooled.POOL.directory = None
    assert 'flowgate_rejections_total{dialect="pooltest",reason="bad_request"} 5.0' in text
    assert 'flowgate_streams_open{dialect="pooltest",flow="wf"} 5.0' in text
    assert "process_cpu_seconds_total" not in text
