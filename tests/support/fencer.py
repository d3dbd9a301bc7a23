"""External fencers for tests: started as the kubelet starts the fencer sidecar of
k8s/examples/fencer-sidecar (and restarts it), `--external`, no agent pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from agent.fence import fencer_command


class Sidecar:
    """The external fencers of one member (one at a time: a restart is a new one), on
    `<run>/fencer.sock` for `data_dir`, logging to `<run>/sidecar.log`."""

    def __init__(self, run: Path, data_dir: Path) -> None:
        self.socket = run / "fencer.sock"
        self.log = run / "sidecar.log"
        self.data_dir = data_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        run.mkdir(parents=True, exist_ok=True)

    def start(self, *wrap: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [*wrap, *fencer_command(), "--external", "--socket", str(self.socket),
                 "--data-dir", str(self.data_dir), "--grace", "0.5"],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        give_up = time.monotonic() + 10
        while not _listening(self.socket):
            assert proc.poll() is None and time.monotonic() < give_up, self.log.read_text()
            time.sleep(0.02)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
