"""The guardian stops a whole server process tree when its parent dies, even by SIGKILL.

A real process tree stands in for vLLM here (a parent with a worker child, as vLLM's API
server has its engine core), so the test needs no model and runs in seconds.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

SERVER = textwrap.dedent(
    """
    import subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(worker.pid, flush=True)
    time.sleep(600)
    """
)

CALLER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    guardian = subprocess.Popen(
        [sys.executable, "-m", "serving.guardian", str(os.getpid()), "--", sys.executable, "-c", sys.argv[1]],
        start_new_session=True, stdout=subprocess.PIPE, text=True,
    )
    print(guardian.pid, guardian.stdout.readline().strip(), flush=True)
    time.sleep(600)
    """
)


def _wait_gone(pids, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def test_killing_the_caller_with_sigkill_stops_the_server_and_its_workers():
    env = {**os.environ, "FLEDGE_STOP_GRACE_S": "3", "PYTHONPATH": os.getcwd()}
    caller = subprocess.Popen([sys.executable, "-c", CALLER, SERVER], stdout=subprocess.PIPE, text=True, env=env)
    guardian_pid, worker_pid = map(int, caller.stdout.readline().split())
    server_pids = [p.pid for p in psutil.Process(guardian_pid).children(recursive=True)]
    assert worker_pid in server_pids

    caller.send_signal(signal.SIGKILL)  # no handler can run: only the guardian can clean up
    caller.wait()
    assert _wait_gone([guardian_pid, *server_pids]) == []


def test_the_server_exiting_takes_its_stray_workers_with_it():
    stray = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('up', flush=True)"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    guardian = subprocess.Popen(
        [sys.executable, "-m", "serving.guardian", str(os.getpid()), "--", sys.executable, "-c", stray],
        start_new_session=True, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert guardian.stdout.readline().strip() == "up"
    assert guardian.wait(timeout=15) == 0
    leftovers = [p for p in psutil.process_iter(["pid"]) if _in_group(p, guardian.pid)]
    assert leftovers == []


def _in_group(process, group):
    # A zombie has exited and only waits for its new parent (init) to reap it.
    try:
        return os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


STARTER = textwrap.dedent(
    """
    import subprocess, sys, time
    owner = sys.argv[2]
    guardian = subprocess.Popen(
        [sys.executable, "-m", "serving.guardian", owner, "--", sys.executable, "-c", sys.argv[1]],
        start_new_session=True, stdout=subprocess.PIPE, text=True,
    )
    print(guardian.pid, guardian.stdout.readline().strip(), flush=True)
    time.sleep(600)
    """
)


def test_a_server_owned_by_another_process_outlives_the_one_that_started_it():
    """What lets a killed release leave its canary serving: the servers a flow run starts
    belong to the serving plane, and only the plane's death stops them."""
    env = {**os.environ, "FLEDGE_STOP_GRACE_S": "3", "PYTHONPATH": os.getcwd()}
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    starter = subprocess.Popen([sys.executable, "-c", STARTER, SERVER, str(owner.pid)], stdout=subprocess.PIPE,
                               text=True, env=env)
    guardian_pid, worker_pid = map(int, starter.stdout.readline().split())
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    time.sleep(2)  # the guardian polls every 0.5 s
    assert _wait_gone([guardian_pid, worker_pid], timeout=0.5) == [guardian_pid, worker_pid]

    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert _wait_gone([guardian_pid, worker_pid]) == []


def test_the_fleet_stops_an_instance_another_process_started(tmp_path):
    from serving.fleet import Fleet, InstanceRecord
    from serving.launcher import LocalLauncher

    env = {**os.environ, "FLEDGE_STOP_GRACE_S": "3", "PYTHONPATH": os.getcwd()}
    guardian = subprocess.Popen(
        [sys.executable, "-m", "serving.guardian", str(os.getpid()), "--", sys.executable, "-c", SERVER],
        start_new_session=True, stdout=subprocess.PIPE, text=True, env=env,
    )
    worker_pid = int(guardian.stdout.readline())
    fleet = Fleet(tmp_path, LocalLauncher(tmp_path))
    record = InstanceRecord(key="m/1", served_model_name="m/1", base_url="http://127.0.0.1:9/v1", pid=guardian.pid,
                            log_path="-", model_dir="-", max_model_len=64, started_at=time.time(), start_seconds=0)
    fleet._write({"m/1": record})
    assert list(Fleet(tmp_path, LocalLauncher(tmp_path)).records()) == ["m/1"]  # another process's view

    assert Fleet(tmp_path, LocalLauncher(tmp_path)).stop("m/1") is True
    guardian.wait(timeout=15)
    assert _wait_gone([worker_pid]) == []
    assert fleet.records() == {}


RECORD_STARTER = textwrap.dedent(
    """
    import subprocess, sys, time
    guardian = subprocess.Popen(
        [sys.executable, "-m", "serving.guardian", str(__import__("os").getpid()), "--record", sys.argv[2], "m/1",
         "--", sys.executable, "-c", sys.argv[1]],
        start_new_session=True, stdout=subprocess.PIPE, text=True,
    )
    print(guardian.pid, guardian.stdout.readline().strip(), flush=True)
    time.sleep(600)
    """
)


def _record_owned_server(tmp_path):
    env = {**os.environ, "FLEDGE_STOP_GRACE_S": "3", "PYTHONPATH": os.getcwd()}
    starter = subprocess.Popen([sys.executable, "-c", RECORD_STARTER, SERVER, str(tmp_path / "instances.json")],
                               stdout=subprocess.PIPE, text=True, env=env)
    guardian_pid, worker_pid = map(int, starter.stdout.readline().split())
    return starter, guardian_pid, worker_pid


def _record(guardian_pid: int, lease_s: float = 300.0):
    from serving.fleet import InstanceRecord

    return InstanceRecord(key="m/1", served_model_name="m/1", base_url="http://127.0.0.1:9/v1", pid=guardian_pid,
                          log_path="-", model_dir="-", max_model_len=64, started_at=time.time(), start_seconds=0,
                          lease_expires=time.monotonic() + lease_s)


def test_until_its_record_names_it_a_server_belongs_to_its_starter(tmp_path):
    """A release killed while its server was still starting leaves no server without a record."""
    starter, guardian_pid, worker_pid = _record_owned_server(tmp_path)
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    assert _wait_gone([guardian_pid, worker_pid]) == []


def test_a_recorded_server_outlives_its_starter_and_stops_when_its_record_is_removed(tmp_path):
    from serving.fleet import Fleet
    from serving.launcher import LocalLauncher

    starter, guardian_pid, worker_pid = _record_owned_server(tmp_path)
    fleet = Fleet(tmp_path, LocalLauncher(tmp_path))
    fleet._write({"m/1": _record(guardian_pid)})
    time.sleep(1.2)  # the guardian has seen its record (it polls every 0.5 s)
    starter.send_signal(signal.SIGKILL)  # the starter (a release flow, a gateway) dies
    starter.wait()
    time.sleep(1.5)
    assert _wait_gone([guardian_pid, worker_pid], timeout=0.5) == [guardian_pid, worker_pid]
    fleet._write({})  # the record removed: its server goes
    assert _wait_gone([guardian_pid, worker_pid]) == []


def test_a_recorded_server_whose_lease_lapses_stops(tmp_path):
    from serving.fleet import Fleet
    from serving.launcher import LocalLauncher

    starter, guardian_pid, worker_pid = _record_owned_server(tmp_path)
    fleet = Fleet(tmp_path, LocalLauncher(tmp_path), lease_s=2.0)
    fleet._write({"m/1": _record(guardian_pid, lease_s=2.0)})
    time.sleep(1.0)
    assert fleet.renew() == ["m/1"]  # renewed once: 2 s more from now
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    time.sleep(1.0)
    assert _wait_gone([guardian_pid], timeout=0.3) == [guardian_pid]  # still within its lease
    assert _wait_gone([guardian_pid, worker_pid], timeout=10) == []  # nobody renewed it
    assert fleet.records() == {}
