"""CPU and resident memory of server process trees, sampled in a background thread with psutil."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

# A Ray node's workers (Serve proxy, replicas, haproxy) are all descendants of its raylet, so watching
# the raylet's tree covers the whole graph of that node and nothing of another Ray on the same machine.
RAY_NODE_ROOT = "raylet"
SCORER_LAUNCHER = "serve_app.run"  # starts Ray, Redis and the edge as its children


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the sampler started
    rss_mb: float
    processes: int


@dataclass
class Usage:
    """What a process tree used over a measured interval."""

    cpu_cores: float  # average busy cores (1.0 = one core fully busy)
    rss_mb_mean: float
    rss_mb_max: float
    processes: int
    samples: list[Sample] = field(default_factory=list, repr=False)
    cores_by_process: dict[str, float] = field(default_factory=dict)  # where the CPU went, by label

    def memory_growth_pct(self, early: tuple[float, float] = (0.1, 0.2), late: float = 0.9) -> float | None:
        """Mean RSS of the last tenth against the tenth after warm-up, in percent (None: too few samples)."""
        if len(self.samples) < 10:
            return None
        end = self.samples[-1].t
        first = [s.rss_mb for s in self.samples if early[0] * end <= s.t <= early[1] * end]
        last = [s.rss_mb for s in self.samples if s.t >= late * end]
        if not first or not last or not sum(first):
            return None
        base = sum(first) / len(first)
        return (sum(last) / len(last) - base) / base * 100.0


def process_label(proc: psutil.Process) -> str:
    """A readable name: Ray sets worker titles such as `ray::ServeReplica:fraud:Ingress`."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return "?"
    first = cmdline[0] if cmdline else proc.name()
    if "ServeReplica:" in first:  # `ray::SERVE_REPLICA::app#Dep#id:ServeReplica:app:Dep.method`
        return "ServeReplica:" + first.split("ServeReplica:", 1)[1].split(".", 1)[0].split()[0]
    if first.startswith("ray::"):
        return first.split()[0].split(".", 1)[0]  # `ray::ServeController.listen_for_change` -> actor
    if len(cmdline) > 1 and first.rsplit("/", 1)[-1].startswith("python"):
        if "-m" in cmdline[1:-1]:
            return f"python -m {cmdline[cmdline.index('-m') + 1]}"
        script = next((a for a in cmdline[1:] if not a.startswith("-")), "")
        return f"python {script.rsplit('/', 1)[-1][:40]}"
    return first.rsplit("/", 1)[-1]


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class ProcessTreeSampler:
    """Sums CPU time and RSS over root processes and all their descendants, new ones included."""

    def __init__(self, roots: Sequence[int], interval_s: float = 0.5) -> None:
        if not roots:
            raise ValueError("ProcessTreeSampler needs at least one process id")
        self.roots = [psutil.Process(pid) for pid in roots]
        self.interval_s = interval_s
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._labels: dict[int, str] = {}
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._baseline = False

    def _tree(self) -> list[psutil.Process]:
        seen: dict[int, psutil.Process] = {}
        for root in self.roots:
            with contextlib.suppress(psutil.Error):
                for proc in [root, *root.children(recursive=True)]:
                    seen.setdefault(proc.pid, proc)
        return list(seen.values())

    def _sample(self) -> None:
        rss, alive = 0, 0
        for proc in self._tree():
            try:
                cpu = _cpu_seconds(proc)
                rss += proc.memory_info().rss
            except psutil.Error:
                continue  # exited between listing and reading
            alive += 1
            # A process first seen after the baseline was started during the interval (a new replica, a
            # worker): all its CPU time belongs to the interval.
            self._cpu_start.setdefault(proc.pid, cpu if self._baseline else 0.0)
            self._cpu_last[proc.pid] = cpu
            if proc.pid not in self._labels:
                self._labels[proc.pid] = process_label(proc)
        self._samples.append(Sample(time.monotonic() - self._t0, rss / 2**20, alive))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> ProcessTreeSampler:
        self._t0 = time.monotonic()
        self._cpu_start.clear()
        self._cpu_last.clear()
        self._labels.clear()
        self._samples.clear()
        self._baseline = True
        self._sample()
        self._baseline = False
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Usage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._sample()
        self._stop.clear()
        elapsed = max(self._samples[-1].t, 1e-9)
        used = {pid: self._cpu_last[pid] - self._cpu_start.get(pid, 0.0) for pid in self._cpu_last}
        by_label: dict[str, float] = {}
        for pid, seconds in used.items():
            label = self._labels.get(pid, "?")
            by_label[label] = by_label.get(label, 0.0) + seconds / elapsed
        cpu = sum(used.values())
        rss = [s.rss_mb for s in self._samples]
        return Usage(
            cpu_cores=max(cpu, 0.0) / elapsed,
            rss_mb_mean=sum(rss) / len(rss),
            rss_mb_max=max(rss),
            processes=self._samples[-1].processes,
            samples=list(self._samples),
            cores_by_process={
                k: round(v, 3) for k, v in sorted(by_label.items(), key=lambda kv: -kv[1]) if v >= 0.005
            },
        )


def listening_pids(port: int) -> list[int]:
    """Processes with a TCP socket listening on `port` (any local address)."""
    pids = {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid
    }
    return sorted(pids)


def server_roots(port: int) -> list[int]:
    """The process trees that serve `port`: the listener's own, its whole Ray node's (the raylet), or,
    for the edge HAProxy that `python -m serve_app.run` starts, that process's (Ray, Redis and the edge)."""
    roots: set[int] = set()
    for pid in listening_pids(port):
        root = pid
        with contextlib.suppress(psutil.Error):
            for parent in psutil.Process(pid).parents():
                if parent.name() == RAY_NODE_ROOT or SCORER_LAUNCHER in " ".join(parent.cmdline()):
                    root = parent.pid
                    break
        roots.add(root)
    return sorted(roots)
