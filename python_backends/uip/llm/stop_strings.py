"""Stop strings over streamed text, with OpenAI semantics (pure).

The output ends right before the first occurrence of any stop string, even when the string
spans several tokens or several streamed deltas. Text that could still become the start of a
stop string is held back until it is resolved, so a client never sees a partial stop string.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopCheck:
    text: str  # safe to emit now
    stopped: bool  # a stop string matched: `text` is the last of the output


class StopStringMatcher:
    """Per-request state: the text held back (not emitted yet) since the last emission."""

    def __init__(self, stops: list[str]):
        self.stops = sorted({s for s in stops if s}, key=len)
        self.held = ""
        self.stopped = False

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def feed(self, delta: str) -> StopCheck:
        """Take the next piece of text; return what may be emitted."""
        if self.stopped:
            return StopCheck("", True)
        if not self.stops:
            return StopCheck(delta, False)
        text = self.held + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self.held = ""
            return StopCheck(text[:min(hits)], True)
        keep = self._held_suffix(text)
        self.held = text[len(text) - keep:] if keep else ""
        return StopCheck(text[:len(text) - keep], False)

    def finish(self) -> str:
        """The output has ended without a stop string: release what was held back."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out
