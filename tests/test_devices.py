"""The build's devices and where the bias path runs (``pyllamaam doctor``), on any build."""

from __future__ import annotations

import sys

import pytest

from pyllamaam import _native, devices

pytestmark = pytest.mark.native


def test_devices_list_the_cpu():
    found = _native.devices()
    cpu = [d for d in found if d["type"] == "CPU"]
    assert len(cpu) == 1, found
    assert cpu[0]["name"] and cpu[0]["description"] and cpu[0]["backend"]
    assert 0 < cpu[0]["memory_free"] <= cpu[0]["memory_total"]
    assert all(d["type"] in _native.DEVICE_TYPES.values() for d in found)
    assert devices.has_cuda() == any(d["name"].startswith("CUDA") and d["type"] == "GPU" for d in found)


def test_gpu_layers_are_the_last_ones():
    with_gpu = bool(devices.gpus())
    assert _native.gpu_layers(4, 0) == [False] * 4
    assert _native.gpu_layers(4, 2) == [False, False, with_gpu, with_gpu]
    assert _native.gpu_layers(4, 99) == _native.gpu_layers(4, -1) == [with_gpu] * 4


def test_bias_offload_on_the_cpu_reports_the_biased_layers():
    # n_gpu_layers=0: nothing is offloaded, and the bias adds no graph split
    r = devices.bias_offload(n_gpu_layers=0)
    assert r["offloaded"] is False and r["gpu_layers"] == []
    assert r["biased_layers"]
    for p in ("regular", "flash"):
        assert r[p]["splits_with_bias"] == r[p]["splits_without"] >= 1, r


def test_a_failing_probe_is_reported_not_fatal(monkeypatch):
    assert devices.bias_offload_isolated(0)["biased_layers"]
    monkeypatch.setattr(sys, "executable", "/bin/false")  # stands for an interpreter that crashes
    r = devices.bias_offload_isolated(0)
    assert r["offloaded"] is False and "exited with 1" in r["reason"]
