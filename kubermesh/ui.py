"""Output for people: steps with their duration, and errors as sentences."""

from __future__ import annotations

# One way to show progress, shared with the image build (which needs nothing from here).
from image.errors import say, step

__all__ = ["Failure", "say", "step"]


class Failure(Exception):
    """An error for people: a sentence, and what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
