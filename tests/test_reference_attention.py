"""Reference attention against attention written out by hand (softmax(q k^T / sqrt(d)) v per head, float64)."""

from __future__ import annotations

import math

import pytest
import torch

from emo_model.network.attention import (
    Attention,
    cached_positions,
    reference_attention,
    separate_reference_attention,
    sinusoidal_positions,
)

HEADS, HEAD_DIM, DIM = 2, 3, 4


def _attn(context_dim=None) -> Attention:
    torch.manual_seed(0)
    attn = Attention(DIM, context_dim, heads=HEADS, head_dim=HEAD_DIM)
    with torch.no_grad():
        attn.to_out[0].bias.uniform_(-1, 1)  # a bias that shows (the zero-bank rows of separate attention)
    return attn


def oracle(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """One token sequence ``x`` [L, C] attending to ``context`` [M, C'], written out by hand."""
    d = lambda t: t.detach().double()  # noqa: E731
    q, k, v = x.double() @ d(attn.to_q.weight).T, context.double() @ d(attn.to_k.weight).T, context.double() @ d(attn.to_v.weight).T
    heads = []
    for h in range(attn.heads):
        cols = slice(h * attn.head_dim, (h + 1) * attn.head_dim)
        scores = q[:, cols] @ k[:, cols].T / math.sqrt(attn.head_dim)
        heads.append(torch.softmax(scores, dim=-1) @ v[:, cols])
    return (torch.cat(heads, dim=-1) @ d(attn.to_out[0].weight).T + d(attn.to_out[0].bias)).float()


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, DIM, generator=g)  # 3 token sequences of 5 tokens
    ref1 = torch.randn(1, 2, DIM, generator=g)  # one portrait's 2 reference tokens, shared by every row
    ref3 = torch.randn(3, 2, DIM, generator=g)  # one bank row per token sequence
    return x, ref1, ref3


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- the attention primitive ------------------------------------------------------------------------------


def test_self_and_cross_attention_match_the_hand_written_formula():
    attn, (x, ref1, _) = _attn(), _inputs()
    _close(attn(x), torch.stack([oracle(attn, x[b], x[b]) for b in range(3)]))
    _close(attn(x, extra_kv=attn.project_kv(ref1)), torch.stack([oracle(attn, x[b], torch.cat([x[b], ref1[0]])) for b in range(3)]))
    cross = _attn(context_dim=6)
    context = torch.randn(3, 7, 6, generator=torch.Generator().manual_seed(2))
    _close(cross(x, context), torch.stack([oracle(cross, x[b], context[b]) for b in range(3)]))


def test_one_head_with_a_shared_bank_row():
    torch.manual_seed(0)
    attn = Attention(DIM, heads=1, head_dim=5)
    x, ref1, _ = _inputs()
    _close(attn(x, extra_kv=attn.project_kv(ref1)), torch.stack([oracle(attn, x[b], torch.cat([x[b], ref1[0]])) for b in range(3)]))


def test_the_parameters_have_diffusers_names_and_sd15_defaults():
    """Checkpoints load without renaming: to_q / to_k / to_v without bias, to_out.0 with one; 8 heads of 64 by default."""
    names = {name: tuple(p.shape) for name, p in Attention(4, context_dim=6, heads=2, head_dim=3).named_parameters()}
    assert names == {"to_q.weight": (6, 4), "to_k.weight": (6, 6), "to_v.weight": (6, 6), "to_out.0.weight": (4, 6),
                     "to_out.0.bias": (4,)}
    default = Attention(4)
    assert (default.heads, default.head_dim, default.to_q.weight.shape[0]) == (8, 64, 512)


def test_sinusoidal_positions_by_hand():
    pe = sinusoidal_positions(2, 4)  # div_term = [1, 10000 ** (-2 / 4)] = [1, 0.01]
    expected = torch.tensor([[[0.0, 1.0, 0.0, 1.0], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]]])
    _close(pe, expected)
    assert pe.shape == (1, 2, 4) and pe.dtype == torch.float32
    far = sinusoidal_positions(1001, 4)[0, 1000]  # position 1000: 10000 ** -0.5 * 1000 = 10
    _close(far, torch.tensor([math.sin(1000), math.cos(1000), math.sin(10), math.cos(10)]))
    cached = cached_positions(2, 4, torch.device("cpu"), torch.float64)
    assert cached.dtype == torch.float64 and cached is cached_positions(2, 4, torch.device("cpu"), torch.float64)
    _close(cached.float(), expected)


# ---- reference attention ----------------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [None, torch.tensor([True, True, True])])
def test_every_row_with_the_reference_attends_to_itself_and_the_reference(enabled):
    attn, (x, ref1, _) = _attn(), _inputs()
    out = reference_attention(attn, x, attn.project_kv(ref1), enabled)
    _close(out, torch.stack([oracle(attn, x[b], torch.cat([x[b], ref1[0]])) for b in range(3)]))


def test_without_a_reference_or_with_every_row_off_it_is_plain_self_attention():
    attn, (x, ref1, _) = _attn(), _inputs()
    plain = torch.stack([oracle(attn, x[b], x[b]) for b in range(3)])
    _close(reference_attention(attn, x, None, None), plain)
    _close(reference_attention(attn, x, None, torch.tensor([False, True, True])), plain)
    _close(reference_attention(attn, x, attn.project_kv(ref1), torch.tensor([False, False, False])), plain)


@pytest.mark.parametrize("enabled", [[False, True, True], [True, False, True], [False, True, False]])
@pytest.mark.parametrize("per_row", [False, True])
def test_rows_that_are_off_attend_to_themselves_only(enabled, per_row):
    """The unconditional rows first (the usual layout) or anywhere; one shared bank row or one per sequence."""
    attn, (x, ref1, ref3) = _attn(), _inputs()
    ref = ref3 if per_row else ref1
    out = reference_attention(attn, x, attn.project_kv(ref), torch.tensor(enabled))
    expected = [
        oracle(attn, x[b], torch.cat([x[b], ref[b if per_row else 0]]) if on else x[b]) for b, on in enumerate(enabled)
    ]
    _close(out, torch.stack(expected))


def test_a_flag_per_row_is_required():
    attn, (x, ref1, _) = _attn(), _inputs()
    with pytest.raises(ValueError) as exc:
        reference_attention(attn, x, attn.project_kv(ref1), torch.tensor([True, False]))
    assert str(exc.value) == "reference_enabled has 2 rows for 3 token sequences"


# ---- separate reference attention (keys / values: the reference only) ------------------------------------


@pytest.mark.parametrize("per_row", [False, True])
def test_separate_reference_attention_reads_the_reference_only(per_row):
    attn, (x, ref1, ref3) = _attn(), _inputs()
    ref = ref3 if per_row else ref1
    out = separate_reference_attention(attn, x, attn.project_kv(ref), None, False)
    _close(out, torch.stack([oracle(attn, x[b], ref[b if per_row else 0]) for b in range(3)]))
    _close(separate_reference_attention(attn, x, attn.project_kv(ref), torch.tensor([True] * 3), True), out)


@pytest.mark.parametrize("enabled", [[True, False, True], [False, True, True], [False, True, False]])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("zeros_unconditional", [False, True])
def test_rows_without_the_reference_get_zero_or_the_output_bias(enabled, per_row, zeros_unconditional):
    attn, (x, ref1, ref3) = _attn(), _inputs()
    ref = ref3 if per_row else ref1
    off = attn.to_out[0].bias.detach().expand(5, DIM) if zeros_unconditional else torch.zeros(5, DIM)
    out = separate_reference_attention(attn, x, attn.project_kv(ref), torch.tensor(enabled), zeros_unconditional)
    _close(out, torch.stack([oracle(attn, x[b], ref[b if per_row else 0]) if on else off for b, on in enumerate(enabled)]))


@pytest.mark.parametrize("zeros_unconditional", [False, True])
def test_no_bank_or_no_row_on_gives_every_row_the_no_reference_value(zeros_unconditional):
    attn, (x, ref1, _) = _attn(), _inputs()
    off = attn.to_out[0].bias.detach().expand(3, 5, DIM) if zeros_unconditional else torch.zeros(3, 5, DIM)
    for kv, enabled in ((None, None), (None, torch.tensor([True] * 3)), (attn.project_kv(ref1), torch.tensor([False] * 3))):
        out = separate_reference_attention(attn, x, kv, enabled, zeros_unconditional)
        _close(out, off)
        out.add_(1.0)  # a fresh tensor, not a view of the bias
    assert attn.to_out[0].bias.abs().max() <= 1.0
