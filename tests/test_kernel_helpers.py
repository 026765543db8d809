"""The shared Triton helpers on their own: grouped launch order and the online-softmax update (with its running
first argmax)."""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

from fastgrpo_kernels.common import grouped_tile, online_softmax_update

# Triton kernels on CPU tensors: needs the interpreter (tests/conftest.py).
pytestmark = pytest.mark.interpreter


@triton.jit
def _grouped_kernel(out_ptr, n_rows, n_cols, GROUP: tl.constexpr):
    pid = tl.program_id(0)
    r, c = grouped_tile(pid, n_rows, n_cols, GROUP)
    tl.store(out_ptr + r * n_cols + c, pid)


@pytest.mark.parametrize("n_rows, n_cols, group", [(3, 5, 2), (8, 1, 8), (1, 7, 4), (9, 4, 3), (5, 3, 1)])
def test_grouped_tile_is_a_bijection(n_rows, n_cols, group):
    out = torch.full((n_rows, n_cols), -1, dtype=torch.int32)
    _grouped_kernel[(n_rows * n_cols,)](out, n_rows, n_cols, GROUP=group)
    assert sorted(out.flatten().tolist()) == list(range(n_rows * n_cols))
    # Consecutive programs of one full group cover `group` row blocks of the same column before moving on.
    if n_rows >= group:
        assert sorted(out[:group, 0].tolist()) == list(range(group))


@triton.jit
def _online_kernel(
    z_ptr, m_ptr, s_ptr, t_ptr, q_ptr, arg_ptr, V,
    HAS_T: tl.constexpr, HAS_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    rows = tl.arange(0, BLOCK_N)
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    t = tl.zeros((BLOCK_N,), dtype=tl.float32)
    q = tl.zeros((BLOCK_N,), dtype=tl.float32)
    arg = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(z_ptr + rows[:, None] * V + cols[None, :], mask=cols[None, :] < V, other=float("-inf"))
        m, s, t, q, arg, e, alpha = online_softmax_update(m, s, t, q, arg, z, v0, HAS_T, HAS_Q, True)
    tl.store(m_ptr + rows, m)
    tl.store(s_ptr + rows, s)
    tl.store(t_ptr + rows, t)
    tl.store(q_ptr + rows, q)
    tl.store(arg_ptr + rows, arg)


@pytest.mark.parametrize("has_t", [True, False])
def test_online_softmax_update_gives_logsumexp_and_entropy(has_t):
    # Rows whose maximum arrives late (rescaling), rows with large offsets (cancellation in lse - E[z]), and a row
    # with -inf logits (a banned token: exp(-inf) = 0 and no 0 * -inf in the entropy sum). V=100: a masked tail.
    z = torch.randn(16, 100) * 4
    z[0, 90:] += 30
    z[1] += 1000.0
    z[2, ::3] = float("-inf")
    # exact ties: row 3's maximum twice in one tile, row 4's in two tiles, row 5's at columns 0 and 99
    z[3, 40], z[3, 45] = 50.0, 50.0
    z[4, 31], z[4, 64] = 50.0, 50.0
    z[5, 0], z[5, 99] = 50.0, 50.0
    m, s, t, q = (torch.full((16,), float("nan")) for _ in range(4))
    arg = torch.full((16,), -7, dtype=torch.int32)
    _online_kernel[(1,)](z, m, s, t, q, arg, 100, HAS_T=has_t, HAS_Q=not has_t, BLOCK_N=16, BLOCK_V=32)
    z64 = z.double()
    lse = torch.logsumexp(z64, -1)
    torch.testing.assert_close((m + torch.log(s)).double(), lse, rtol=1e-6, atol=1e-5)
    assert torch.equal(arg.long(), z.argmax(-1))  # torch's argmax: the first maximum
    assert arg[3:6].tolist() == [40, 31, 0]
    if not has_t:  # log sum p^2 = log q - 2 log s
        expected = torch.logsumexp(2 * torch.log_softmax(z64, -1), -1)
        torch.testing.assert_close((torch.log(q) - 2 * torch.log(s)).double(), expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(q, torch.zeros(16))
    if has_t:
        p = torch.softmax(z64, -1)
        entropy = -(p * torch.where(p > 0, torch.log_softmax(z64, -1), 0)).sum(-1)
        # t is kept in units of the exp2 exponent, (z - m) * log2(e): entropy = log(s) - t * ln(2) / s.
        torch.testing.assert_close((torch.log(s) - t * math.log(2) / s).double(), entropy, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(t, torch.zeros(16))
