"""Output for people: steps with their duration, and errors as sentences."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Failure(Exception):
    """An error for people: a sentence, and what to do about it."""

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
