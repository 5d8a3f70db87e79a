"""The Ray cluster petal works on: a local one it starts and stops, or a real one it joins (`--address`).

A local cluster listens on 127.0.0.1 only, keeps Ray's token authentication on, has no dashboard
unless asked, runs in a temp directory of petal's own (/tmp/petal-ray/<pid>-<id>) and is shut down
when the command ends. Loopback only takes one Ray setting: Ray binds every server of a node (GCS,
raylet and object manager, each worker's and the driver's gRPC server, the runtime-env and dashboard
agents, the metrics exporter) to 127.0.0.1 when the node's IP is a loopback address, but `ray.init`
replaces a loopback `_node_ip_address` with the machine's external address unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ("local Ray only"), which Ray reads when first imported.

A SIGKILL of the command leaves some Ray processes behind (Ray's dashboard and runtime-env agents,
docs/SCALE.md): the next petal command of any kind (`petal.cli.main` calls `stop_orphans`) looks for
session directories whose owner is dead, stops the processes that hold files open in them, and says
so in one line. Processes of a Ray cluster that petal did not start hold nothing there, so they are
never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from pathlib import Path

from petal.errors import ConfigError, PetalError, counted

log = logging.getLogger(__name__)

SESSIONS_ROOT = Path(tempfile.gettempdir()) / "petal-ray"
LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 30
CHATTY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


class ClusterError(PetalError):
    """The Ray cluster cannot be reached or cannot run what was asked."""


@contextlib.contextmanager
def ray_cluster(address: str | None = None, *, dashboard: bool = False):
    """`ray` connected to the cluster at `address`, or to a local one started (and stopped) here."""
    stop_orphans()
    if not address:
        # Token authentication with a secret of this session's: Ray's default for local clusters since 2.59,
        # made explicit so that no setting of the user's turns it off. Ray reads it when first imported.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        # Keep _node_ip_address=127.0.0.1 as given (module docstring); the workers inherit it.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    import ray.data

    for name in CHATTY_LOGGERS:  # after the import: Ray sets up its loggers when imported
        logging.getLogger(name).setLevel(logging.ERROR)
    session = None
    if address:
        if dashboard:
            raise ConfigError("--dashboard starts a local cluster's dashboard; a cluster you join has its own (ray start --include-dashboard)")
        _check_reachable(address)
        with _quiet_stdio():
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        session = SESSIONS_ROOT / f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        session.mkdir(parents=True)
        (session / "owner.json").write_text(json.dumps({"pid": os.getpid(), "started": _process_start(os.getpid())}))
        with _quiet_stdio():
            ray.init(
                address="local",  # always a new cluster: never one found through RAY_ADDRESS or a `ray start`
                _node_ip_address=LOOPBACK,
                include_dashboard=dashboard,
                dashboard_host=LOOPBACK,
                _temp_dir=str(session),
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        node_ip = ray.get_runtime_context().gcs_address.rpartition(":")[0]
        if node_ip != LOOPBACK:  # Ray was imported before petal could set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
            log.warning("petal: this local Ray cluster listens on %s, not only on %s: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
                        "before Ray is first imported", node_ip, LOOPBACK)
        if dashboard:
            print(f"Ray dashboard: http://{node_ip}:8265", file=sys.stderr)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # petal shows one bar of its own
        context.print_on_execution_start = False
        yield ray
    finally:
        with _quiet_stdio():
            ray.shutdown()
        if session is not None:
            _stop_session_processes(session)
            shutil.rmtree(session, ignore_errors=True)


def available_cpus(ray) -> float:
    return float(ray.cluster_resources().get("CPU", 0))


def check_workers(ray, workers: int) -> None:
    """Refuse, with the numbers, more workers than the cluster has CPUs: they would wait forever."""
    total = available_cpus(ray)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1. Received: {workers}")
    if workers > total:
        raise ClusterError(f"--workers {workers} is more than the {total:g} CPUs of the Ray cluster; use at most --workers {int(total)}")


def stop_orphans() -> int:
    """Stop the Ray processes of petal sessions whose command died (SIGKILL); returns how many.

    Called by every petal command, so it is cheap when there is nothing to do (one directory listing),
    imports no Ray, and does nothing without psutil (the light install, which cannot have started Ray)."""
    try:
        sessions = list(SESSIONS_ROOT.iterdir())
    except OSError:  # no session was ever started here (or the folder is not ours to read)
        return 0
    try:
        import psutil
    except ImportError:
        return 0
    stopped = 0
    for session in sessions:
        owner = _read_owner(session)
        if owner is None or _alive(owner["pid"], owner.get("started")):
            continue
        try:
            count = _stop_session_processes(session)
        except psutil.Error:  # e.g. processes of another user's session
            continue
        shutil.rmtree(session, ignore_errors=True)
        if count:
            print(f"petal: stopped {counted(count, 'Ray process', 'Ray processes')} left behind by an earlier petal run (pid {owner['pid']})", file=sys.stderr)
        stopped += count
    return stopped


def session_processes(session: Path) -> list:
    """The live processes of a petal session: those with a file open under its directory (every Ray process
    keeps its log files open there). Command lines and environments cannot tell: Ray rewrites both
    into a process title such as "ray::DashboardAgent"."""
    import psutil

    prefix = str(session) + os.sep
    found = []
    for process in psutil.process_iter():
        try:
            if (process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE
                    and any(f.path.startswith(prefix) for f in process.open_files())):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _stop_session_processes(session: Path) -> int:
    import psutil

    processes = session_processes(session)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return len(processes)


def _read_owner(session: Path) -> dict | None:
    try:
        owner = json.loads((session / "owner.json").read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _alive(pid: int, started: float | None) -> bool:
    """The owner is alive: its pid runs and is the same process (not a reused pid)."""
    current = _process_start(pid)
    return current is not None and (started is None or abs(current - started) < 1.0)


def _check_reachable(address: str) -> None:
    """Fail in seconds, in one line, where ray.init would retry for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({exc}); is `ray start --head` running there?") from None


@contextlib.contextmanager
def _quiet_stdio():
    """Ray prints banners to stdout/stderr while starting and stopping; keep them out of the user's way."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def ray_error_line(exc: Exception) -> str:
    """One line from an error Ray raised: its first line that is not traceback (per rank, for Ray Train's)."""
    text = str(exc)
    sections = re.split(r"\[Rank (\d+) Error Snippet\]:", text)
    if len(sections) > 1:
        return "; ".join(f"rank {rank}: {_message(body)}" for rank, body in zip(sections[1::2], sections[2::2]))[:500]
    return _message(text) or type(exc).__name__


def _message(text: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if (stripped and not line.startswith((" ", "\t")) and not stripped.startswith(("Traceback", "File ", "^", "..."))
                and '", line ' not in stripped):
            return stripped[:240]
    return ""
