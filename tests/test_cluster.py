"""The local Ray cluster petal starts: every socket it listens on is on 127.0.0.1 while predict-batch and train
--workers run, and what a killed command leaves behind is stopped by the next petal command, of any kind."""

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import PETAL, exported_tiny_run, make_folder, make_image

from petal.scale.cluster import SESSIONS_ROOT, session_processes

TRAIN = ["--model", "tutorial", "--image-size", "32", "32", "--batch-size", "4", "--workers", "2"]


def listening_while_it_runs(command: list[str]) -> tuple[subprocess.CompletedProcess, dict[tuple[int, str], set[tuple[str, int]]]]:
    """Run a petal command; until it ends, look every 0.2 s at the processes of its Ray session (those with a file
    open in /tmp/petal-ray/<pid>-*) and at the command itself, and collect the address and port of each of their
    listening TCP sockets and bound UDP sockets: {(pid, process title): {(address, port)}}."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    names: dict[int, str] = {}
    sockets: dict[int, set[tuple[str, int]]] = {}
    while child.poll() is None:
        sessions = list(SESSIONS_ROOT.glob(f"{child.pid}-*"))
        pids = set()
        for process in [psutil.Process(child.pid), *(session_processes(sessions[0]) if sessions else [])]:
            try:
                names[process.pid] = process.name()  # its latest title, e.g. gcs_server, raylet, ray::IDLE, ray::RuntimeEnvAgent
                pids.add(process.pid)
            except psutil.Error:
                continue
        for connection in psutil.net_connections("inet"):
            if connection.pid in pids and (connection.status == psutil.CONN_LISTEN or connection.type == socket.SOCK_DGRAM):
                sockets.setdefault(connection.pid, set()).add((ipv4(connection.laddr.ip), connection.laddr.port))
        time.sleep(0.2)
    stdout, stderr = child.communicate()
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr), {(pid, names[pid]): found for pid, found in sockets.items()}


def ipv4(address: str) -> str:
    """gRPC binds an IPv6 socket to ::ffff:127.0.0.1, the IPv4-mapped form of 127.0.0.1: reachable as 127.0.0.1 only."""
    mapped = getattr(ipaddress.ip_address(address), "ipv4_mapped", None)
    return str(mapped) if mapped else address


def titles_of(seen) -> str:
    return " | ".join(sorted(title for _, title in seen))


def not_on_loopback(seen) -> dict:
    return {key: sockets for key, sockets in seen.items() if any(address != "127.0.0.1" for address, _ in sockets)}


@pytest.mark.slow
def test_every_socket_of_a_local_cluster_listens_on_loopback_during_predict_batch(tmp_path):
    model = exported_tiny_run(tmp_path) / "export" / "model-float32.tflite"
    for i in range(60):
        make_image(tmp_path / "to-classify" / f"photo_{i:03d}.jpg", (40, 60, 200), seed=i)
    done, seen = listening_while_it_runs([PETAL, "predict-batch", str(model), str(tmp_path / "to-classify"), "--out",
                                          str(tmp_path / "out"), "--part-size", "2", "--workers", "2"])

    assert done.returncode == 0, done.stderr
    assert {title for _, title in seen} >= {"gcs_server", "raylet", "ray::RuntimeEnvAgent"}, titles_of(seen)
    assert sum("ray::" in title for _, title in seen) >= 2, titles_of(seen)  # the workers and the agents
    assert not_on_loopback(seen) == {}


def fake_orphan_session(tmp: Path) -> tuple[int, subprocess.Popen]:
    """A session folder under TMPDIR=tmp whose owner has died, and a process holding a log file open in it, as a
    Ray agent does after its petal command was SIGKILLed. Returns the dead owner's pid and that process."""
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    session = tmp / "petal-ray" / f"{dead_pid}-0a1b2c"
    (session / "logs").mkdir(parents=True)
    (session / "owner.json").write_text(json.dumps({"pid": dead_pid, "started": 0.0}))
    log = session / "logs" / "runtime_env_agent.log"
    leftover = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'w'); time.sleep(600)", str(log)])
    deadline = time.time() + 30
    while not log.exists():
        assert leftover.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.2)  # the file exists once opened: the process holds it from here on
    return dead_pid, leftover


def test_the_next_petal_command_of_any_kind_stops_what_a_killed_run_left_behind(tmp_path):
    dead_pid, leftover = fake_orphan_session(tmp_path)
    try:
        done = subprocess.run([PETAL, "models"], capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines() == [f"petal: stopped 1 Ray process left behind by an earlier petal run (pid {dead_pid})"]
        assert leftover.wait(timeout=30) is not None
        assert not (tmp_path / "petal-ray" / f"{dead_pid}-0a1b2c").exists()
    finally:
        leftover.kill()


def test_the_cleanup_imports_no_ray_and_is_skipped_without_psutil(tmp_path):
    dead_pid, leftover = fake_orphan_session(tmp_path)
    script = ("import sys; sys.modules['psutil'] = None  # the light install has no psutil\n"
              "from petal.cli import main; code = main(['models']); print(code, 'ray' in sys.modules)")
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
        assert done.stdout.splitlines()[-1] == "0 False", done.stderr
        assert "stopped" not in done.stderr and "Traceback" not in done.stderr
    finally:
        leftover.kill()


@pytest.mark.slow  # about 3.5 minutes on 2 cores; the predict-batch test above checks the same cluster in CI
def test_every_socket_of_a_local_cluster_listens_on_loopback_during_train_workers(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=12)
    done, seen = listening_while_it_runs([PETAL, "train", str(data), *TRAIN, "--epochs", "2", "--out", str(tmp_path / "run"),
                                          "--cache-dir", str(tmp_path / "cache")])

    assert done.returncode == 0, done.stderr
    assert {title for _, title in seen} >= {"gcs_server", "raylet", "ray::RuntimeEnvAgent"}, titles_of(seen)
    workers = {key: sockets for key, sockets in seen.items() if key[1] == "ray::RayTrainWorker"}
    assert len(workers) == 2, titles_of(seen)
    # The one exception (docs/SCALE.md): TensorFlow's own gRPC server in each training worker, which
    # MultiWorkerMirroredStrategy starts and TensorFlow binds to every interface ("0.0.0.0:" in its GrpcServer::Init,
    # shown as the dual-stack "::"); no setting of TensorFlow's or Ray's changes that.
    for (pid, title), sockets in workers.items():  # at most one: the server may start after the last look
        assert len([address for address, _ in sockets if address != "127.0.0.1"]) <= 1, (pid, sockets)
        assert [address for address, _ in sockets if address != "127.0.0.1"][0] in ("::", "0.0.0.0"), (pid, sockets)
    assert not_on_loopback({key: sockets for key, sockets in seen.items() if key not in workers}) == {}


@pytest.mark.slow
def test_after_a_sigkill_of_train_workers_the_next_petal_command_of_any_kind_stops_the_leftovers(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=12)
    child = subprocess.Popen([PETAL, "train", str(data), *TRAIN, "--epochs", "50", "--out", str(tmp_path / "run"),
                              "--cache-dir", str(tmp_path / "cache")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "run" / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists():  # an epoch is done: every Ray process of the run is up
        assert child.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.2)
    [session] = SESSIONS_ROOT.glob(f"{child.pid}-*")
    child.send_signal(signal.SIGKILL)
    child.wait()
    time.sleep(2)  # the Ray processes that notice their driver is gone have exited by now
    leftovers = session_processes(session)
    assert leftovers, "the kill left nothing behind: nothing to test"

    done = subprocess.run([PETAL, "models"], capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "left behind" in line]
    stopped = re.fullmatch(rf"petal: stopped (\d+) Ray process(?:es)? left behind by an earlier petal run \(pid {child.pid}\)", line)
    assert stopped and 1 <= int(stopped.group(1)) <= len(leftovers), line
    assert not [p for p in leftovers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not session.exists()
