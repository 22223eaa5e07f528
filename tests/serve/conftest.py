"""Servers for the serve tests, on 127.0.0.1 ephemeral ports, every wait bounded and every server stopped.

`live_server(app)`: the app under uvicorn in a thread of this process (cheap: the model is loaded once per
module). `server_process(*args)`: the real `python -m fastbert serve --port 0 ...` as a subprocess, its port
read from the line it prints when ready."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import uvicorn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 120  # a subprocess imports torch and loads the model on a busy 2-core machine


class LiveServer:
    def __init__(self, app):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@contextlib.contextmanager
def live_server(app):
    with LiveServer(app) as server:
        yield server


class ServerProcess:
    def __init__(self, *args):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "fastbert", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.url = self._wait_for_port()

    def _wait_for_port(self):
        lines = []

        def read():
            for line in self.proc.stdout:
                lines.append(line)
                if "listening on" in line:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(START_SECONDS)
        found = [line for line in lines if "listening on" in line]
        if not found:
            self.kill()
            raise RuntimeError(f"fastbert serve did not start: {lines} {self.proc.stderr.read()[-3000:]}")
        return found[0].split("listening on ")[1].strip()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def server_process():
    started = []

    def start(*args):
        process = ServerProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
