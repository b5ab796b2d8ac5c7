"""RULER-style synthetic tasks, generated offline from a seed and scored exactly.

A :class:`Task` is a haystack of public-domain text (the Python reference manual topics that
ship with the standard library, :mod:`pydoc_data.topics`) with short *inserts* (needles,
distractors, key-value records, variable assignments) placed at seeded depths, plus one
question whose answer is a short string. Several tasks can share one haystack
(:func:`make_suite`): one prefill and one compaction then serve every question.

Kinds (RULER, Hsieh et al. 2024, adapted to a 135M model):

- ``passkey``: one pass key in the haystack.
- ``multikey``: one needle ``key -> number`` among distractor needles of the same form.
- ``kv``: a block of ``record <hex> has value <number>`` lines; ask one record.
- ``vartrack``: a chain ``X = 41839; Y = X; Z = Y`` among distractor chains; ask the last
  variable's value (RULER asks for every name in the chain; one value scores exactly).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from ..errors import ConfigError

KINDS = ("passkey", "multikey", "kv", "vartrack")
_WORDS = (
    "amber apple arrow aspen badge basil birch cedar cobalt comet coral crane delta ember falcon "
    "fern flint garnet glacier harbor hazel heron indigo iris jasper juniper kestrel lagoon "
    "lantern maple marble meadow nectar nimbus oak olive onyx orchid otter pebble pepper pine "
    "quartz raven reed saffron sage sparrow spruce tiger topaz tulip velvet violet walnut willow"
).split()


@dataclass
class Task:
    """One question over a haystack.

    Attributes
    ----------
    kind : one of :data:`KINDS`.
    seed : the generator seed.
    inserts : the sentences placed in the haystack (needle first, then distractors).
    question : the question, asked after the context.
    answer : the exact expected answer (no leading space).
    """

    kind: str
    seed: int
    inserts: list[str]
    question: str
    answer: str


@dataclass
class Context:
    """A haystack with the inserts of one or more tasks.

    ``text`` is the context; ``continuation`` is the haystack text that truly follows it (for
    the fidelity metrics); ``depths`` maps each insert to its character offset in ``text``.
    """

    text: str
    continuation: str
    tasks: list[Task]
    depths: dict[str, int] = field(default_factory=dict)

    def prompt(self, task: Task) -> str:
        """What follows the context when ``task`` is asked (the answer follows this)."""
        return f"\n\nQuestion: {task.question}\nAnswer:"


@functools.lru_cache(maxsize=1)
def haystack_text() -> str:
    """The Python reference manual topics (public domain-like PSF text shipped with CPython)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))
    return re.sub(r"\n{3,}", "\n\n", text)


def _number(rng: np.random.Generator, digits: int = 5) -> str:
    return str(int(rng.integers(10 ** (digits - 1), 10**digits)))


def _names(rng: np.random.Generator, n: int) -> list[str]:
    return [str(w) for w in rng.choice(_WORDS, size=n, replace=False)]


def make_task(kind: str, seed: int, n_distractors: int = 3) -> Task:
    """One task of ``kind`` drawn from ``seed`` (deterministic)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    if kind == "passkey":
        key = _number(rng)
        ins = [f"The pass key is {key}. Remember it. {key} is the pass key."]
        return Task(kind, seed, ins, "What is the pass key?", key)
    if kind == "multikey":
        names = _names(rng, n_distractors + 1)
        nums = [_number(rng, 6) for _ in names]
        ins = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(names, nums, strict=True)]
        return Task(kind, seed, ins, f"What is the special magic number for {names[0]}?", nums[0])
    if kind == "kv":
        n = n_distractors + 1
        keys = ["".join(rng.choice(list("abcdef0123456789"), size=6)) for _ in range(n)]
        vals = [_number(rng) for _ in range(n)]
        block = " ".join(f"Record {k} has value {v}." for k, v in zip(keys, vals, strict=True))
        i = int(rng.integers(n))
        return Task(kind, seed, [block], f"What is the value of record {keys[i]}?", vals[i])
    if kind == "vartrack":
        names = [n.upper() for n in _names(rng, 3 * (1 + min(n_distractors, 2)))]
        value = _number(rng)
        chain = names[:3]
        ins = [f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in pairwise(chain)]
        for j in range(1, len(names) // 3):  # distractor chains with other values
            d = names[3 * j : 3 * j + 3]
            ins += [f"VAR {d[0]} = {_number(rng)}."] + [f"VAR {b} = VAR {a}." for a, b in pairwise(d)]
        return Task(kind, seed, ins, f"What is the value of VAR {chain[-1]}?", value)
    raise ConfigError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")


def make_suite(kinds: list[str] | tuple[str, ...], seed: int, n_chars: int, n_distractors: int = 3) -> Context:
    """A haystack of about ``n_chars`` characters holding every task of ``kinds``.

    Inserts go at seeded depths between 5% and 90% of the text, at sentence or paragraph
    boundaries, so the recent window (the last tokens) never holds a needle.
    """
    if n_chars < 200:
        raise ConfigError(f"n_chars must be at least 200, not {n_chars}")
    tasks = [make_task(k, seed, n_distractors) for k in kinds]
    inserts = [s for t in tasks for s in t.inserts]
    hay = haystack_text()
    rng = np.random.default_rng([seed, 7919])
    need = n_chars - sum(len(s) + 1 for s in inserts)
    if need + 2000 > len(hay):
        raise ConfigError(f"the haystack holds {len(hay)} characters; {n_chars} asked")
    start = int(rng.integers(0, len(hay) - need - 2000))
    start = hay.rfind("\n\n", 0, start) + 2 if hay.rfind("\n\n", 0, start) >= 0 else 0
    body, after = hay[start : start + need], hay[start + need :]
    cuts = sorted(_boundary(body, int(d * len(body))) for d in rng.uniform(0.05, 0.9, size=len(inserts)))
    order = rng.permutation(len(inserts))
    first = 0
    for t in tasks:  # a variable chain reads in assignment order
        n = len(t.inserts)
        if t.kind == "vartrack":
            mine = order == np.arange(first, first + n)[:, None]
            slots = np.flatnonzero(mine.any(axis=0))
            order[slots] = np.arange(first, first + n)
        first += n
    parts, depths, prev = [], {}, 0
    for cut, i in zip(cuts, order, strict=True):
        parts.append(body[prev:cut])
        depths[inserts[i]] = sum(len(p) for p in parts)
        parts.append(" " + inserts[i] + " ")
        prev = cut
    parts.append(body[prev:])
    return Context("".join(parts), after, tasks, depths)


def _boundary(text: str, i: int) -> int:
    """The end of a sentence or line at or after ``i`` (within 300 characters; else ``i``),
    so that an insert never drifts to the end of the text, into the recent window."""
    for sep in (". ", "\n\n", "\n", " "):
        j = text.find(sep, i, i + 300)
        if j >= 0:
            return j + 1
    return i


def normalize(s: str) -> str:
    """Lowercase, strip spaces and trailing punctuation."""
    return s.strip().strip(".,;:!\"'").strip().lower()


def score_exact(prediction: str, answer: str) -> bool:
    """True when the prediction's first word is exactly the answer (case and punctuation aside)."""
    words = prediction.strip().split()
    return bool(words) and normalize(words[0]) == normalize(answer)
