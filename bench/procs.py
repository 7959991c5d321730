"""The processes a benchmark runs against, and what /proc says about them.

The app runs the way `make run` serves it (uvicorn, one worker, lifespan on, a fresh SQLite
database), as in tests/conftest.py's `run_app`; the upstream and the load generator are their own
processes too. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Configuration that must not leak from the developer's shell into the measured app.
CLEARED = (
    "NVIDIA_API_KEY",
    "NVIDIA_BASE_URL",
    "NVIDIA_MODEL",
    "COMPLETIONS_BASE_URL",
    "COMPLETIONS_API_KEY",
    "COMPLETIONS_MODEL",
    "DATABASE_URL",
    "CACHE_URL",
    "DJANGO_ENV",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {seconds} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class Upstream:
    def __init__(self, port: int, process: subprocess.Popen) -> None:
        self.port = port
        self.pid = process.pid


@contextlib.contextmanager
def _module(name: str, *args: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """`python -m <name> --port <free port> <args>` in its own process, until it listens."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", name, "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield port, process
    finally:
        stop(process)


@contextlib.contextmanager
def upstream(delay_ms: float = 5.0) -> Iterator[Upstream]:
    """The lean upstream (bench/upstream.py) in its own process."""
    with _module("bench.upstream", "--delay-ms", str(delay_ms)) as (port, process):
        yield Upstream(port, process)


@contextlib.contextmanager
def floor(upstream_port: int) -> Iterator[App]:
    """The minimal relay (bench/floor.py) in its own process, in front of the upstream."""
    with _module("bench.floor", "--upstream-port", str(upstream_port)) as (port, process):
        yield App(port, process)


class App:
    def __init__(self, port: int, process: subprocess.Popen) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self.pid = process.pid


@contextlib.contextmanager
def app(tmp_dir: Path, root: Path = ROOT, **env_overrides: str) -> Iterator[App]:
    """The app served as `make run` serves it, from the tree at `root` (another tree: an A/B
    run, bench/ab.py), on a fresh SQLite database in `tmp_dir`."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(
        DJANGO_SETTINGS_MODULE="playground.settings",
        DATABASE_URL=f"sqlite:///{tmp_dir / 'db.sqlite3'}",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(env_overrides)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--verbosity", "0"],
        cwd=root,
        env=env,
        check=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "playground.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "on",
            "--log-level",
            "warning",
            "--backlog",
            "2048",
        ],
        cwd=root,
        env=env,
    )
    try:
        wait_for_port(port, process)
        yield App(port, process)
    finally:
        stop(process)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def machine_busy() -> float:
    """CPU-seconds the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


def cpu_stall() -> float:
    """Seconds in which some runnable task waited for a CPU (Linux PSI), or NaN without PSI."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return float("nan")
    return int(line.rsplit("total=", 1)[1]) / 1e6


class PeakRss:
    """Samples a process's RSS every few milliseconds in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_load(spec: dict) -> dict:
    """Run bench/load.py in its own process with `spec`; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    packages = ("django", "uvicorn", "uvloop", "httptools", "httpx", "pygments", "playwright")
    return {
        "CPU": f"{cpu}, {len(os.sched_getaffinity(0))} cores available",
        "Memory": memory,
        "OS": os_name,
        "Python": platform.python_version(),
        "Packages": ", ".join(f"{p} {version(p)}" for p in packages),
    }
