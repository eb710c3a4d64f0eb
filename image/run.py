"""Running the build's tools: output to the build log, failures as sentences."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from firstboot.files import write_atomic
from image.errors import BuildError


class Log:
    """The build log: every command and its output, for when a step fails."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Its owner's only, like the output beside it.
        write_atomic(path, "", 0o600)

    def write(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.path.read_text(errors="replace").splitlines()[-lines:])


def run(log: Log, cmd: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, capture: bool = False,
        hint: str = "") -> str:
    """Run a command; its output goes to the log (or is returned with capture=True).

    A command that fails raises BuildError naming the program, its exit status and
    the last lines it printed.
    """
    argv = [os.fspath(c) for c in cmd]
    log.write(f"$ {' '.join(argv)}")
    full_env = {**os.environ, **env} if env else None
    try:
        with log.path.open("a") as out:
            proc = subprocess.run(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE if capture else out,
                                  stderr=out, text=True, check=False)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} is not installed",
                         hint="./dev.sh setup installs the build host's packages") from None
    if proc.returncode != 0:
        raise BuildError(f"{Path(argv[0]).name} exited with status {proc.returncode}:\n"
                         f"{log.tail()}", hint=hint or f"the whole output is in {log.path}")
    return proc.stdout if capture else ""


def nspawn(log: Log, tree: Path, cmd: Sequence[str], *, binds: Mapping[Path, str] | None = None,
           rw_binds: Mapping[Path, str] | None = None, env: Mapping[str, str] | None = None,
           capture: bool = False) -> str:
    """Run a command inside the image tree (no network namespace games, no boot)."""
    argv: list[str | os.PathLike[str]] = [
        "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--as-pid2",
        "--directory", tree]
    argv += [f"--bind-ro={src}:{dst}" for src, dst in (binds or {}).items()]
    argv += [f"--bind={src}:{dst}" for src, dst in (rw_binds or {}).items()]
    argv += [f"--setenv={k}={v}" for k, v in (env or {}).items()]
    return run(log, [*argv, *cmd], capture=capture)
