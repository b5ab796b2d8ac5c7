"""Token sampling and stop strings for streamed generation."""

from __future__ import annotations

from typing import Any

import numpy as np


class Sampler:
    """Greedy at temperature 0, else softmax(logits / temperature) cut to the top-p nucleus."""

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.rng = np.random.default_rng(None if seed is None else seed % (1 << 64))  # OpenAI seeds may be negative

    def sample(self, logits: np.ndarray) -> int:
        """``logits``: float [n_vocab]."""
        x = np.asarray(logits, dtype=np.float64)
        if self.temperature <= 0:
            return int(np.argmax(x))
        p = np.exp((x - x.max()) / self.temperature)
        p /= p.sum()
        if self.top_p < 1.0:
            order = np.argsort(-p)
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), self.top_p)) + 1]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(self.rng.choice(len(p), p=p))


class StopScanner:
    """Turn "the text so far" into safe pieces to send, holding back what may start a stop string.

    ``push(text)`` takes the whole detokenized completion after each token and returns
    (new text to send, stopped). A trailing U+FFFD (an incomplete UTF-8 sequence) is held too.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.sent = 0
        self.text = ""

    def push(self, text: str) -> tuple[str, bool]:
        self.text = text
        hits = [i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            piece = text[self.sent : end] if end > self.sent else ""
            self.sent = max(self.sent, end)
            return piece, True
        safe = len(text)
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        while safe > self.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        piece = text[self.sent : safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return piece, False

    def flush(self) -> str:
        """What was held back, once generation ended without a stop string."""
        piece = self.text[self.sent :]
        self.sent = len(self.text)
        return piece


def is_eog(model: Any, token: int) -> bool:
    """End of generation (EOS, end of turn...)."""
    return bool(model.is_eog(token))
