"""Shared fixtures: the real patched libllama, tiny random GGUF models and SmolLM2.

Native tests never skip: CI builds the library and fetches the models, so a missing piece is
a failure.
"""

from __future__ import annotations

import numpy as np
import pytest

import pyllamaam
from pyllamaam import tiny

TEXT = (
    "The lighthouse keeper wrote in his log every evening. On the third night of the storm "
    "he noted that the supply boat had not come, that the lamp oil would last nine more days, "
    "and that the gulls had gone quiet."
)
CONT = " The next morning the sea was calm and"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_models(tiny_dir):
    models = {k: pyllamaam.load_model(str(tiny.tiny_model_path(k, tiny_dir))) for k in tiny.KINDS}
    yield models
    for m in models.values():
        m.close()


@pytest.fixture(scope="module")  # per module: a test may close the model it was given
def tiny64(tiny_dir):
    """A tiny llama whose heads (64) hold whole blocks of every KV cache type, and get llama.cpp's
    Hadamard rotation when quantized."""
    m = pyllamaam.load_model(str(tiny.tiny_model_path("llama", tiny_dir, head_dim=64)))
    yield m
    m.close()


def ids(n: int, seed: int = 0) -> list[int]:
    """``n`` token ids, the same for the same seed."""
    return [int(t) for t in np.random.default_rng(seed).integers(10, 500, n)]


@pytest.fixture(scope="session")
def smollm2():
    m = pyllamaam.load_model(None)
    yield m
    m.close()


@pytest.fixture(scope="session")
def gemma3_270m():
    m = pyllamaam.load_model("gemma3-270m")
    yield m
    m.close()


@pytest.fixture(scope="session")
def models(tiny_models, smollm2, gemma3_270m):
    """Every attention model we test the bias on: name -> Model."""
    return {
        "llama": tiny_models["llama"],
        "gemma3": tiny_models["gemma3"],
        "hybrid": tiny_models["hybrid"],
        "smollm2": smollm2,
        "gemma3-270m": gemma3_270m,
    }


# models with quantized weights: llama.cpp quantizes their activations to 8 bits, so identities
# hold only up to the noise that this amplifies
QUANTIZED = {"smollm2", "gemma3-270m"}


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference relative to the spread of the reference logits."""
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-6))


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Max over rows of KL(softmax(p) || softmax(q)), in nats."""
    p_logits = p_logits.astype(np.float64)
    q_logits = q_logits.astype(np.float64)
    lp = p_logits - np.logaddexp.reduce(p_logits, axis=1, keepdims=True)
    lq = q_logits - np.logaddexp.reduce(q_logits, axis=1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).max())
