"""How the runtime runs a long-lived program it starts and stops on its own
(a slot holder's etcd member and control plane): a systemd unit on a node, a
child process in the lab. Either way the program gets its configuration as an
environment (an EnvironmentFile for the unit); `$ARGS` in it is the program's
arguments, split on whitespace as systemd splits `ExecStart=… $ARGS`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from firstboot.files import write_atomic


class Runner(Protocol):
    def running(self) -> bool: ...

    def start(self, env: Mapping[str, str]) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


def environment_file(env: Mapping[str, str]) -> str:
    """The environment as a systemd EnvironmentFile."""
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))


def end(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """End a child: SIGTERM, SIGKILL if it is still there after `timeout`; reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class UnitRunner:
    """A unit that reads its configuration from `env_file`."""

    def __init__(self, unit: str, env_file: Path, mode: int = 0o644) -> None:
        self.unit, self.env_file, self.mode = unit, env_file, mode

    def running(self) -> bool:
        """Active, or on its way (a Type=notify program tells systemd when it is up)."""
        r = subprocess.run(["systemctl", "is-active", self.unit], capture_output=True,
                           text=True, timeout=10, check=False)
        return r.stdout.strip() in ("active", "activating", "reloading")

    def start(self, env: Mapping[str, str]) -> None:
        write_atomic(self.env_file, environment_file(env), self.mode)
        r = subprocess.run(["systemctl", "start", "--no-block", self.unit],
                           capture_output=True, text=True, timeout=30, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"systemctl start {self.unit}: {r.stderr.strip()}")

    def stop(self) -> None:
        subprocess.run(["systemctl", "stop", self.unit], capture_output=True, timeout=60,
                       check=False)

    def close(self) -> None:
        """A runtime that stops leaves the unit running (it is the node's, not the
        runtime's): the next run finds it."""


class ChildRunner:
    """The lab's: the program as a child of the runtime, in the node's namespace,
    its output appended to `log`."""

    def __init__(self, binary: Path, log: Path) -> None:
        self.binary, self.log = binary, log
        self.proc: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, env: Mapping[str, str]) -> None:
        argv = [str(self.binary), *env.get("ARGS", "").split()]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None:
            end(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
