"""A real ``tensorboard --logdir`` server in a subprocess, queried over HTTP (for the event-file tests)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, route: str, **query: str) -> bytes:
        q = ("?" + urllib.parse.urlencode(query)) if query else ""
        with urllib.request.urlopen(self.url + route + q, timeout=30) as response:
            return bytes(response.read())

    def json(self, route: str, **query: str) -> Any:
        return json.loads(self.get(route, **query))

    def wait_for(self, predicate: Any, timeout: float = 90.0) -> Any:
        """Polls ``predicate(self)`` until it returns something truthy (the server loads in the background)."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                last = predicate(self)
                if last:
                    return last
            except (urllib.error.URLError, ConnectionError, KeyError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tensorboard at {self.url} never satisfied the check (last answer: {last!r})")


@contextlib.contextmanager
def tensorboard(logdir: str, *flags: str) -> Iterator[Server]:
    """``tensorboard --logdir logdir *flags`` on a free port; yields once it answers HTTP."""
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(port), "--host", "127.0.0.1"]
    cmd += ["--reload_interval", "1", *flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    server = Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                server.get("/data/runs")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
