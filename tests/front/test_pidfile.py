"""The pid file: held by the running server, never a reason to signal another process.

A careless operator (or an unlucky machine) leaves a pid file behind: the server was killed
outright, its pid now belongs to something else; a file says ``0`` or ``-1`` (kill(2) then signals
a whole process group, or every process). SIGHUP's default action ends a process, so ``flowgate
reload`` must refuse all of these; and a second ``flowgate serve`` with the same ``pid_file`` must
neither take the file over nor remove it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from proxy.front.pidfile import PidFile, PidFileBusy, read_pid
from tests.conftest import base_config
from tests.front.served import ROOT, Served, served_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and /proc")


def flowgate(*args: str) -> subprocess.CompletedProcess:
    # its own session: were it to signal its process group (pid 0), it would not reach pytest
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, start_new_session=True)


def config_with_pid_file(tmp_path, pid_file) -> str:
    cfg = base_config("http://127.0.0.1:9")
    cfg["server"]["pid_file"] = str(pid_file)
    path = tmp_path / "fg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("text", ["0", "-1", "-4242", "4194305", "12abc", "", "1 2"])
def test_a_pid_that_is_not_one_process_is_refused(tmp_path, text):
    path = tmp_path / "fg.pid"
    path.write_text(text + "\n")
    with pytest.raises(LookupError) as exc:
        read_pid(path)
    assert str(path) in str(exc.value)


def test_a_stale_pid_file_never_signals_the_process_that_now_has_the_pid(tmp_path):
    """The server was killed outright (SIGKILL, OOM): its pid file stays, and the pid is reused."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "fg.pid"
        pid_file.write_text(f"{bystander.pid}\n")
        done = flowgate("reload", "--config", config_with_pid_file(tmp_path, pid_file))
        time.sleep(0.2)
        assert bystander.poll() is None, "flowgate reload killed an unrelated process"
        assert done.returncode == 1 and "no flowgate server holds" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    finally:
        bystander.kill()
        bystander.wait()


def test_pid_zero_in_the_file_signals_no_process_group(tmp_path):
    pid_file = tmp_path / "fg.pid"
    pid_file.write_text("0\n")
    done = flowgate("reload", "--config", config_with_pid_file(tmp_path, pid_file))
    assert done.returncode == 1 and "not a process id" in done.stderr, (done.returncode, done.stderr)


def test_an_explicit_pid_must_be_one_process(tmp_path):
    path = config_with_pid_file(tmp_path, tmp_path / "fg.pid")
    for pid in ("0", "99999999999"):
        done = flowgate("reload", "--config", path, "--pid", pid)
        assert done.returncode == 1 and "not a process id" in done.stderr, (pid, done.returncode, done.stderr)


def test_the_lock_is_held_while_the_server_runs_and_gone_with_it(tmp_path):
    path = tmp_path / "fg.pid"
    held = PidFile(path)
    held.acquire()
    try:
        assert read_pid(path) == os.getpid()
        with pytest.raises(PidFileBusy) as exc:
            PidFile(path).acquire()
        assert f"pid {os.getpid()}" in str(exc.value)
    finally:
        held.release()
    assert not path.exists()
    path.write_text(f"{os.getpid()}\n")  # left behind, as by a server killed outright
    with pytest.raises(LookupError, match="no flowgate server holds"):
        read_pid(path)
    again = PidFile(path)
    again.acquire()  # a stale file is taken over
    again.release()


async def test_a_second_serve_with_the_same_pid_file_leaves_the_first_alone(upstream, tmp_path):
    cfg = served_config(upstream.url, tmp_path)
    server = await Served(tmp_path, cfg).start()
    try:
        twin = tmp_path / "twin"
        twin.mkdir()
        other = {**cfg, "server": {**cfg["server"], "port": cfg["server"]["port"] + 1}}
        (twin / "fg.yaml").write_text(yaml.safe_dump(other))
        done = flowgate("serve", "--config", str(twin / "fg.yaml"))
        assert done.returncode == 1 and f"pid {server.proc.pid}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert read_pid(tmp_path / "fg.pid") == server.proc.pid  # still the first's
        workers = server.workers()
        done = flowgate("reload", "--config", str(server.path))
        assert done.returncode == 0, done.stderr
        await server.until(lambda: len(server.events("config_swapped")) >= 2, 5, "every worker swapped")
        assert server.workers() == workers
    finally:
        assert await server.stop() == 0
    assert not (tmp_path / "fg.pid").exists()


async def test_workers_do_not_hold_the_lock_of_a_supervisor_killed_outright(upstream, tmp_path):
    server = await Served(tmp_path, served_config(upstream.url, tmp_path)).start()
    server.signal(9)
    server.proc.wait()
    with pytest.raises(LookupError, match="no flowgate server holds"):  # at once, orphans or not
        read_pid(tmp_path / "fg.pid")
    await server.stop()


def test_a_server_run_by_another_user_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from proxy.front import reload

    def refused(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(reload.os, "kill", refused)
    path = config_with_pid_file(tmp_path, tmp_path / "fg.pid")
    assert reload.send(path, 4242) == 1
    assert "not allowed to signal process 4242" in capsys.readouterr().err
