"""The test harness itself: servers the tests start do not outlive a killed test run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from features.config import PROJECT_ROOT

# A stand-in for a test process: starts a long-lived "server" as the tests do, says its pid, waits.
TEST_PROCESS = """
import os, subprocess, sys, time
from tests.conftest import start_server
server = start_server([sys.executable, "-c", "import time; time.sleep(120)"], dict(os.environ), subprocess.DEVNULL)
print(server.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie has ended (init reaps it)
    except FileNotFoundError:
        return False


def test_a_server_started_by_the_tests_ends_when_the_test_process_is_killed() -> None:
    test_process = subprocess.Popen(
        [sys.executable, "-c", TEST_PROCESS], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert test_process.stdout is not None
    server = int(test_process.stdout.readline())
    try:
        assert alive(server)
        test_process.kill()  # SIGKILL: no cleanup code of the test process runs
        test_process.wait()
        deadline = time.time() + 10
        while alive(server) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(server), "the server outlived the killed test process"
    finally:
        if alive(server):
            os.kill(server, signal.SIGKILL)
