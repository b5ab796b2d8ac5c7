"""The question-answering suite: documents with many facts, compacted once, asked many times.

Each document (offline, from a seed) is prose of the Python reference manual with inserts:

- ``code``: named 5-digit codes ("Note for the archivist: the locker code is 67767."), several
  per document, asked one by one (exact match);
- the RULER kinds of :mod:`.tasks` (``passkey``, ``multikey``, ``kv``, ``vartrack``; exact match);
- ``choice``: patient records in the LongHealth style (a name with a diagnosis, a medication and
  an allergy), asked as 4-option multiple choice scored by the options' log-likelihood.

One prefill and one compaction serve every question of a document (questions are read on the
cache and leave it unchanged). A question is asked as ``Question: ...`` followed by an answer
stem that the answer completes ("Answer: The locker code for the archivist is"), so a small
model answers in one form; exact match is greedy decoding of the answer's tokens, checked in one
teacher-forced pass (:func:`~.fidelity.answer_check`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from . import tasks

_ROLES = (
    "archivist", "night porter", "head gardener", "librarian", "courier", "quartermaster", "lab technician",
    "ferry captain", "bookkeeper", "chief engineer", "stage manager", "beekeeper", "glassblower", "cartographer",
)
_THINGS = ("locker", "gate", "safe", "alarm", "vault", "cabinet", "storeroom", "mailbox")
_NAMES = (
    "Mara Lind", "Tomas Berg", "Ines Duval", "Oskar Haug", "Lena Moretti", "Ravi Kapoor", "Nora Quist",
    "Jonas Falk", "Elif Demir", "Hugo Marsh", "Ada Okafor", "Piet Janssen",
)
_DIAGNOSES = ("asthma", "gout", "anemia", "migraine", "psoriasis", "angina", "eczema", "bronchitis", "glaucoma",
              "tinnitus")
_DRUGS = ("metformin", "atenolol", "warfarin", "lisinopril", "sertraline", "omeprazole", "amoxicillin",
          "prednisone", "losartan", "digoxin")
_ALLERGENS = ("penicillin", "latex", "peanuts", "shellfish", "pollen", "sulfa drugs", "aspirin", "dust mites",
              "egg protein", "ibuprofen")
#: The answer stems of the RULER kinds (the text before the answer).
_RULER_STEM = {
    "passkey": "The pass key is",
    "multikey": "The special magic number for {name} is",
    "kv": "The value of the record is",
    "vartrack": "The value is",
}


@dataclass
class Question:
    """One question about a document.

    ``answer`` is the exact answer (exact-match kinds) or the right option; ``options`` is
    empty for exact match, else 4 strings (the answer among them)."""

    kind: str
    text: str
    stem: str
    answer: str
    options: tuple[str, ...] = ()

    def prompt(self) -> str:
        return f"\n\nQuestion: {self.text}\nAnswer: {self.stem}"


@dataclass
class Document:
    text: str
    continuation: str
    questions: list[Question]


def make_document(seed: int, n_chars: int, n_codes: int = 2, n_records: int = 1, n_distractors: int = 1) -> Document:
    """A document of about ``n_chars`` characters with its questions (deterministic in ``seed``)."""
    if n_codes > len(_ROLES) or n_records > len(_NAMES):
        raise ConfigError(f"at most {len(_ROLES)} codes and {len(_NAMES)} records per document")
    rng = np.random.default_rng([seed, 4242])
    inserts: list[str] = []
    qs: list[Question] = []
    roles = rng.choice(len(_ROLES), n_codes, replace=False)
    for i in roles:
        role, thing = _ROLES[i], _THINGS[int(rng.integers(len(_THINGS)))]
        code = str(int(rng.integers(10000, 100000)))
        inserts.append(f"Note for the {role}: the {thing} code is {code}.")
        qs.append(Question("code", f"What is the {thing} code for the {role}?",
                           f"The {thing} code for the {role} is", code))
    for i in rng.choice(len(_NAMES), n_records, replace=False):
        name = _NAMES[i]
        facts = {k: [str(x) for x in rng.choice(v, 4, replace=False)]
                 for k, v in (("diagnosis", _DIAGNOSES), ("medication", _DRUGS), ("allergy", _ALLERGENS))}
        inserts.append(
            f"Patient record: {name} was diagnosed with {facts['diagnosis'][0]}, takes "
            f"{facts['medication'][0]} every morning, and is allergic to {facts['allergy'][0]}."
        )
        for k, opts in facts.items():
            order = [str(o) for o in rng.permutation(opts)]
            qs.append(Question("choice", f"What is the {k} of {name}? Options: {', '.join(order)}.",
                               f"The {k} of {name} is", opts[0], tuple(order)))
    for kind in tasks.KINDS:
        t = tasks.make_task(kind, seed, n_distractors)
        inserts += t.inserts
        name = t.question.split(" for ")[-1].rstrip("?") if kind == "multikey" else ""
        qs.append(Question(kind, t.question, _RULER_STEM[kind].format(name=name), t.answer))
    text, after = _place(inserts, seed, n_chars)
    return Document(text, after, qs)


def sizes(n_tokens: int) -> dict[str, int]:
    """Facts per document for a length: 2 codes and one record (3 questions) per 1K tokens, and
    one question of each RULER kind (one distractor each), so facts are about a sixth of 1K
    tokens and less of longer texts: a 4x budget can hold them all, a 10x one cannot."""
    k = max(1, round(n_tokens / 1024))
    return {"n_codes": min(len(_ROLES), 2 * k), "n_records": min(len(_NAMES), k)}


def _place(inserts: list[str], seed: int, n_chars: int) -> tuple[str, str]:
    """The haystack with ``inserts`` at seeded sentence boundaries between 5% and 90% of it
    (a variable chain keeps its order: inserts keep theirs), and the text that follows it."""
    hay = tasks.haystack_text()
    rng = np.random.default_rng([seed, 7919])
    need = n_chars - sum(len(s) + 2 for s in inserts)
    if need < 200 or need + 2000 > len(hay):
        raise ConfigError(f"cannot make a document of {n_chars} characters with {len(inserts)} inserts")
    start = int(rng.integers(0, len(hay) - need - 2000))
    start = hay.rfind("\n\n", 0, start) + 2 if hay.rfind("\n\n", 0, start) >= 0 else 0
    body, after = hay[start : start + need], hay[start + need :]
    cuts = sorted(tasks._boundary(body, int(d * len(body))) for d in np.linspace(0.05, 0.9, len(inserts)))
    order = rng.permutation(len(inserts))
    chain = [i for i, s in enumerate(inserts) if s.startswith("VAR ")]
    slots = sorted(int(np.flatnonzero(order == i)[0]) for i in chain)
    order[slots] = chain  # assignments read in order
    parts, prev = [], 0
    for cut, i in zip(cuts, order, strict=True):
        parts += [body[prev:cut], " " + inserts[i] + " "]
        prev = cut
    parts.append(body[prev:])
    return "".join(parts), after


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))
