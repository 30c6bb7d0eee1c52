"""Start ``intermod serve`` in a subprocess on a free loopback port (demo and tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_READY = re.compile(r"intermod serving on ([\w.\-]+:\d+)")


class ServerProcess:
    """A running ``intermod serve`` subprocess; `address` is "127.0.0.1:<port>"."""

    def __init__(self, data_dir: str | Path, args: Sequence[str] = (),
                 timeout: float = 60.0, env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "intermod.client.cli", "serve", "--host", "127.0.0.1",
               "--port", "0", "--data-dir", str(self.data_dir), *args]
        with open(self.log_path, "ab") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                         env={**os.environ, **(env or {})})
        self.address = self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            match = _READY.search(line)
            if match:
                return match.group(1)
        self.stop()
        raise RuntimeError(f"intermod serve did not start; see {self.log_path}:\n"
                           + self.log_path.read_text(errors="replace")[-2000:])

    def stop(self, kill: bool = False, timeout: float = 30.0) -> int:
        """SIGTERM (graceful) or SIGKILL the server and wait for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextmanager
def running_server(data_dir: str | Path, args: Sequence[str] = (),
                   env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Context manager: a server for the duration of the block, always stopped after."""
    server = ServerProcess(data_dir, args, env=env)
    try:
        yield server
    finally:
        server.stop()
