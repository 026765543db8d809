"""Bad input raises a clear TypeError/ValueError naming the argument, before any kernel launches."""

from __future__ import annotations

import pytest
import torch

import fastgrpo
import fastgrpo.ops as ops


@pytest.fixture
def no_launch(monkeypatch):
    """Any launch of a backend fails the test: errors must come from validation first."""

    def forbidden(backend):
        raise AssertionError(f"a {backend} kernel would have launched")

    monkeypatch.setattr(ops, "_impl", forbidden)


def _inputs(n=4, h=8, v=11):
    return torch.randn(n, h), torch.randn(v, h), torch.randint(0, v, (n,))


@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        (lambda x, w, t: (torch.randn(4, 9), w, t, {}), ValueError, ["hidden", "H=8"]),
        (lambda x, w, t: (x, torch.randn(2, 11, 8), t, {}), ValueError, ["weight", "[V, H]"]),
        (lambda x, w, t: (x, w, t.float(), {}), TypeError, ["targets", "integer"]),
        (lambda x, w, t: (x, w, t.clone().fill_(11), {}), ValueError, ["targets", "[0, V=11)"]),
        (lambda x, w, t: (x, w, t.clone().fill_(-3), {}), ValueError, ["targets", "ignore_index=-100"]),
        (lambda x, w, t: (x, w, t[:3], {}), ValueError, ["targets", "shape"]),
        (lambda x, w, t: (x.to(torch.int32), w, t, {}), TypeError, ["hidden", "float32"]),
        (lambda x, w, t: (x.half(), w.bfloat16(), t, {}), TypeError, ["hidden", "weight", "cannot be mixed"]),
        (lambda x, w, t: (x, w, t, {"bias": torch.randn(10)}), ValueError, ["bias", "(11,)"]),
        (lambda x, w, t: (x, w, t, {"temperature": 0.0}), ValueError, ["temperature", "> 0"]),
        (lambda x, w, t: (x, w, t, {"temperature": -1.0}), ValueError, ["temperature"]),
        (lambda x, w, t: (x, w, t, {"softcap": 0.0}), ValueError, ["softcap"]),
        (lambda x, w, t: (x, w, t, {"logit_scale": float("nan")}), ValueError, ["logit_scale"]),
        (lambda x, w, t: (x, w, t, {"backend": "cuda"}), ValueError, ["backend", "'auto', 'triton', 'torch'"]),
    ],
    ids=[
        "mismatched-H",
        "3d-weight",
        "float-targets",
        "target-too-large",
        "negative-target",
        "targets-shape",
        "int-hidden",
        "fp16-with-bf16",
        "bias-shape",
        "temperature-zero",
        "temperature-negative",
        "softcap-zero",
        "logit-scale-nan",
        "unknown-backend",
    ],
)
def test_bad_input_is_rejected_before_launch(no_launch, mutate, exc, words):
    x, w, t, kw = mutate(*_inputs())
    with pytest.raises(exc) as info:
        fastgrpo.linear_logprobs(x, w, t, **kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_device_mismatch_is_rejected(no_launch):
    x, w, t = _inputs()
    meta_w = w.to("meta")
    with pytest.raises(ValueError, match="same device"):
        fastgrpo.linear_logprobs(x, meta_w, t)


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch, no_launch):
    import fastgrpo_kernels.common as kernels_common

    monkeypatch.setattr(kernels_common, "INTERPRET", False)  # read once, at import: patch that reading
    x, w, t = _inputs()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fastgrpo.linear_logprobs(x, w, t, backend="triton")


def test_auto_backend_resolution(monkeypatch):
    import fastgrpo_kernels.common as kernels_common
    from fastgrpo.api import resolve_backend

    # The interpreter switch is read once, when the kernels are imported (as Triton does): patch that reading.
    monkeypatch.setattr(kernels_common, "INTERPRET", False)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(kernels_common, "INTERPRET", True)
    assert resolve_backend("auto", torch.device("cpu")) == "triton"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


def test_triton_backend_rejects_float64(no_launch, monkeypatch):
    from fastgrpo import triton_backend

    x, w, t = _inputs()
    monkeypatch.undo()  # launch allowed: the dtype check must fire inside the launcher, before the kernel
    with pytest.raises(TypeError, match="float64"):
        triton_backend.forward(x.double(), w.double(), None, t, fastgrpo.LogProbOptions(), torch.float64, False)
