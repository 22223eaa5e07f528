"""A parent killed with SIGKILL takes its busy workers with it (fastbert.parallel.worker.watch_parent).

Each test runs a real parent process (a small script, or `fastbert encode --devices cpu,cpu`) that keeps
two CPU workers busy on a long stream, kills it while they encode, and waits a bounded time for every
worker to go. Whatever survives is killed in a `finally`."""

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; sends SIGKILL")]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("fastbert")
FASTBERT = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "fastbert"]
# How long the workers may outlive their parent: the watch reacts at once; this leaves room for a busy,
# shared machine to schedule the exit.
ORPHAN_EXIT_S = 10
# Starting two workers loads torch and the model three times: generous on a shared 2-core machine.
START_S = 240

PARENT = textwrap.dedent("""
    import itertools
    import sys
    import threading

    from fastbert.parallel.pool import EncodePool

    if __name__ == "__main__":
        path, start = sys.argv[1], sys.argv[2]
        pools = []

        def start_pool():
            pools.append(EncodePool(path, ["cpu", "cpu"], backend="torch"))

        if start == "thread":  # the starting thread ends before the work: the workers must outlive it
            thread = threading.Thread(target=start_pool)
            thread.start()
            thread.join()
        else:
            start_pool()
        print(*(process.pid for process in pools[0]._processes), flush=True)
        texts = ("a long text to keep the workers busy " * 40 + str(i) for i in itertools.count())
        chunks = iter(lambda: list(itertools.islice(texts, 64)), None)
        for _ in pools[0].encode_chunks(chunks):
            print("chunk", flush=True)
""")


def environment():
    variables = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    variables["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), variables.get("PYTHONPATH")]))
    return variables


def alive(pid):
    """True while `pid` runs: a zombie waiting for init to reap it counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def children(pid):
    """The spawned multiprocessing children of `pid` (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def lines_of(stream):
    """A queue of the stream's lines, read on a thread, so that the test can wait with a deadline."""
    lines = queue.Queue()

    def read():
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def kill_and_wait_for_orphans(parent, workers):
    """Kill the parent while its workers encode; the workers still running ORPHAN_EXIT_S seconds later."""
    assert all(alive(pid) for pid in workers), "the workers should be encoding when the parent is killed"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + ORPHAN_EXIT_S
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in workers if alive(pid)]


def clean_up(parent, workers):
    for pid in workers:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    if parent.poll() is None:
        parent.kill()
    parent.wait(timeout=30)


@pytest.mark.parametrize("start", ["main", "thread"])
def test_killed_parent_stops_busy_workers(minilm_path, tmp_path, start):
    # "thread": the pool is started from a thread that ends, so the kernel's parent-death signal (tied to
    # that thread) is not used: the workers' watch thread alone must stop them.
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(minilm_path), start], cwd=tmp_path,
                              env=environment(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    workers = []
    try:
        lines = lines_of(parent.stdout)
        workers = [int(pid) for pid in lines.get(timeout=START_S).split()]
        assert len(workers) == 2
        # The first result is back: the workers hold the next chunks in flight and encode them.
        assert lines.get(timeout=START_S).strip() == "chunk"
        assert lines.get(timeout=START_S).strip() == "chunk"
        assert kill_and_wait_for_orphans(parent, workers) == []
    finally:
        clean_up(parent, workers)


def test_killed_cli_stops_its_workers(minilm_path, tmp_path):
    line = "a long line of text to keep the workers of the command busy " * 20
    (tmp_path / "big.txt").write_text("".join(f"{line}{i}\n" for i in range(20000)))
    parent = subprocess.Popen(FASTBERT + ["encode", "--devices", "cpu,cpu", "--backend", "torch", "--model",
                                          str(minilm_path), "-i", "big.txt", "-o", "p.npy"],
                              cwd=tmp_path, env=environment(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    workers = []
    try:
        progress = tmp_path / "p.npy.progress.json"
        deadline = time.monotonic() + START_S
        # Rows committed: both workers have loaded the model and encode the chunks that follow.
        while not progress.exists() or json.loads(progress.read_text())["rows"] == 0:
            assert parent.poll() is None and time.monotonic() < deadline, "the command never wrote a row"
            time.sleep(0.2)
        workers = children(parent.pid)
        assert len(workers) == 2
        assert kill_and_wait_for_orphans(parent, workers) == []
    finally:
        clean_up(parent, workers)
