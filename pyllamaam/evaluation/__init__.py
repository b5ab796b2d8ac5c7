"""Evaluation and benchmark harness (DESIGN.md sections 6 and 7).

- :mod:`.tasks`: RULER-style tasks from a seed over offline public text, exact scoring;
- :mod:`.fidelity`: KL(full || compacted) and ΔNLL over a true continuation;
- :mod:`.grid`: methods x ratios x models x lengths x seeds, resumable JSONL;
- :mod:`.baselines`: the selectors only the grid reports (``attn-mean``, ``hybrid``, ``random``),
  registered with the library's selector registry when imported;
- :mod:`.report`: summary JSON, markdown tables, quality-vs-ratio plots;
- :mod:`.cost`: prefill, compaction per stage, decode after compaction, memory, scaling;
- :mod:`.cli`: ``pyllamaam eval`` and ``pyllamaam bench``.

Importing this package loads nothing native.
"""
