"""How the build speaks to people: errors as a sentence and what to do about it,
and each step shown as it starts with how long it took.

image/ has these of its own so that it needs nothing from the CLI package that
runs it; the CLI prints a BuildError as it prints its own failures.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class BuildError(Exception):
    """A build that cannot go on: a sentence for people, and a hint what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    """Show a step of long work as it starts and how long it took."""
    say(f"‣ {title}…")
    start = time.monotonic()
    try:
        yield
    except BaseException:
        say(f"  ✗ {title} failed after {time.monotonic() - start:.1f} s")
        raise
    say(f"  ✓ {title} ({time.monotonic() - start:.1f} s)")
