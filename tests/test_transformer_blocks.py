"""The spatial transformer and its block against diffusers' ``Transformer2DModel`` (SD1.5's, which they stand for) with
the same weights, in float64; the reference pass's bank-only block and the separate reference attention's weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import Transformer2DModel

from emo_model.network.attention import SpatialTransformer
from emo_model.network.context import ForwardContext

C, HEADS, CTX, GROUPS = 32, 4, 24, 8


def pair(context_dim):
    torch.manual_seed(0)
    ours = SpatialTransformer(C, HEADS, context_dim, GROUPS).double()
    for p in ours.parameters():  # every weight and bias random (no zero-initialised projection hides a term)
        torch.nn.init.normal_(p, std=0.3)
    theirs = Transformer2DModel(num_attention_heads=HEADS, attention_head_dim=C // HEADS, in_channels=C,
                                cross_attention_dim=context_dim, norm_num_groups=GROUPS, activation_fn="geglu").double()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same key layout, nothing missing or left over
    return ours.eval(), theirs.eval()


def feature_map():
    # a small spread around a non-zero mean: the GroupNorm's eps (1e-6) is a tenth of the variance, so it shows
    g = torch.Generator().manual_seed(1)
    return 0.7 + 3e-3 * torch.randn(2, C, 3, 5, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("context_dim", [CTX, None])
def test_spatial_transformer_is_sd15s_transformer2d(context_dim):
    ours, theirs = pair(context_dim)
    x = feature_map()
    tokens = torch.randn(2, 7, CTX, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        want = theirs(x, encoder_hidden_states=tokens if context_dim else None).sample
        got = ours(x, ForwardContext(cross_context=tokens if context_dim else None))
    assert (want - x).abs().max() > 0.1  # the block changes the map: the comparison below is not of x with x
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_the_reference_pass_last_block_banks_its_norm1_input_and_changes_nothing():
    torch.manual_seed(0)
    block = SpatialTransformer(C, HEADS, CTX, GROUPS, norm1_only=True).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    assert sorted(block.state_dict()) == sorted([
        "norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias",
        "transformer_blocks.0.norm1.weight", "transformer_blocks.0.norm1.bias"])
    block.key = "up.2.attn"
    x, bank = feature_map(), {}
    with torch.no_grad():
        out = block(x, ForwardContext(bank=bank))
    assert out is x and list(bank) == ["up.2.attn"]
    # by hand: GroupNorm (eps 1e-6), the 1x1 conv, tokens [B, H*W, C], LayerNorm (eps 1e-5)
    groups = x.reshape(2, GROUPS, -1)
    normed = ((groups - groups.mean(-1, keepdim=True)) / (groups.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt())
    normed = normed.reshape_as(x) * block.norm.weight[:, None, None] + block.norm.bias[:, None, None]
    projected = torch.einsum("oc,bchw->bhwo", block.proj_in.weight[:, :, 0, 0], normed) + block.proj_in.bias
    t = projected.reshape(2, 15, C)
    ln = block.transformer_blocks[0].norm1
    want = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt() * ln.weight + ln.bias
    torch.testing.assert_close(bank["up.2.attn"], want, rtol=0, atol=1e-10)


def test_a_separate_reference_attention_has_its_own_norm_and_weights():
    plain = set(SpatialTransformer(C, HEADS, CTX, GROUPS).state_dict())
    separate = set(SpatialTransformer(C, HEADS, CTX, GROUPS, separate_reference=True).state_dict())
    prefix = "transformer_blocks.0."
    assert separate - plain == {prefix + k for k in [
        "norm1_5.weight", "norm1_5.bias", "attn1_5.to_q.weight", "attn1_5.to_k.weight", "attn1_5.to_v.weight",
        "attn1_5.to_out.0.weight", "attn1_5.to_out.0.bias"]}
    assert plain <= separate


# ---- the block with a separate reference attention (its own norm and weights, reading only the reference tokens) ---

def by_hand_attention(attn, q_in, kv_in):
    """softmax(q k^T / sqrt(d)) v per head, then the output projection: the attention written out."""
    def heads(t):
        return t.reshape(t.shape[0], t.shape[1], attn.heads, -1).transpose(1, 2)
    q, k, v = heads(q_in @ attn.to_q.weight.T), heads(kv_in @ attn.to_k.weight.T), heads(kv_in @ attn.to_v.weight.T)
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    out = (w @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], -1)
    return out @ attn.to_out[0].weight.T + attn.to_out[0].bias


def layer_norm(ln, t):
    return (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt() * ln.weight + ln.bias


def geglu_ff(ff, t):
    a, gate = (t @ ff.net[0].proj.weight.T + ff.net[0].proj.bias).chunk(2, dim=-1)
    return (a * torch.nn.functional.gelu(gate)) @ ff.net[2].weight.T + ff.net[2].bias


def separate_block():
    from emo_model.network.attention import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(C, HEADS, CTX, separate_reference=True).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block


@pytest.mark.parametrize("scale,enabled,zeros", [(1.0, None, False), (0.5, [False, True], True), (2.0, [False, True], False)])
def test_separate_reference_attention_block_by_hand(scale, enabled, zeros):
    from emo_model.network.context import ReferenceBank

    block = separate_block()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, C, generator=g, dtype=torch.float64)
    ref = torch.randn(1, 5, C, generator=g, dtype=torch.float64)
    audio = torch.randn(2, 3, CTX, generator=g, dtype=torch.float64)
    ctx = ForwardContext(reference=ReferenceBank({"blk": ref}), cross_context=audio, reference_attention_scale=scale,
                         reference_enabled=None if enabled is None else torch.tensor(enabled),
                         unconditional_reference_zeros=zeros, cross_attention_scale=0.75)
    with torch.no_grad():
        got = block(x, "blk", ctx)
        h = layer_norm(block.norm1, x)
        x1 = x + by_hand_attention(block.attn1, h, h)  # plain self-attention: no reference tokens in it
        y = by_hand_attention(block.attn1_5, layer_norm(block.norm1_5, x1), ref.expand(2, -1, -1))
        if enabled is not None:  # row 0 has no reference: 0, or the output bias (what a bank of zeros gives)
            y[0] = block.attn1_5.to_out[0].bias if zeros else 0.0
        x2 = x1 + scale * y
        x3 = x2 + 0.75 * by_hand_attention(block.attn2, layer_norm(block.norm2, x2), audio)
        want = x3 + geglu_ff(block.ff, layer_norm(block.norm3, x3))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_a_block_without_cross_attention_ignores_a_cross_context():
    from emo_model.network.attention import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(C, HEADS, None).double()
    assert block.attn2 is None and block.norm2 is None and not block.norm1_only
    assert "attn1_5.to_q.weight" not in block.state_dict()  # no separate reference attention unless asked
    x = torch.randn(2, 6, C, dtype=torch.float64)
    with torch.no_grad():
        plain = block(x, "blk", ForwardContext())
        given = block(x, "blk", ForwardContext(cross_context=torch.randn(2, 3, CTX, dtype=torch.float64)))
        h = layer_norm(block.norm1, x)
        x1 = x + by_hand_attention(block.attn1, h, h)
    torch.testing.assert_close(plain, x1 + geglu_ff(block.ff, layer_norm(block.norm3, x1)), rtol=0, atol=1e-10)
    assert torch.equal(given, plain)


def test_the_separate_reference_attention_has_the_shapes_of_the_self_attention():
    block = separate_block()
    weights = block.state_dict()
    for name in ["to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"]:
        assert weights["attn1_5." + name].shape == weights["attn1." + name].shape, name
    assert block.attn1_5.heads == HEADS


@pytest.mark.parametrize("after_self_attention,cross", [(False, False), (False, True), (True, False)])
def test_a_reference_pass_banks_norm1_or_after_the_self_attention_norm2(after_self_attention, cross):
    from emo_model.network.attention import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(C, HEADS, CTX).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, bank = torch.randn(2, 6, C, dtype=torch.float64), {}
    with torch.no_grad():
        context = torch.randn(2, 3, CTX, dtype=torch.float64) if cross else None  # a reference pass with tokens in attn2
        block(x, "blk", ForwardContext(bank=bank, bank_after_self_attention=after_self_attention, cross_context=context))
        h = layer_norm(block.norm1, x)
        x1 = x + by_hand_attention(block.attn1, h, h)
    want = layer_norm(block.norm2, x1) if after_self_attention else h
    assert list(bank) == ["blk"]
    torch.testing.assert_close(bank["blk"], want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("enabled", [None, [False, True]])
def test_reference_attention_joins_the_reference_tokens_to_the_self_attention_by_hand(enabled):
    """The plain block (no separate reference attention): the self-attention's keys / values are its own tokens and
    the banked reference tokens of its key; a row without reference (the unconditional branch) attends to itself."""
    from emo_model.network.attention import TransformerBlock
    from emo_model.network.context import ReferenceBank

    torch.manual_seed(0)
    block = TransformerBlock(C, HEADS, None).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, C, generator=g, dtype=torch.float64)
    ref = torch.randn(1, 5, C, generator=g, dtype=torch.float64)
    ctx = ForwardContext(reference=ReferenceBank({"blk": ref, "other": torch.zeros(1, 5, C, dtype=torch.float64)}),
                         reference_enabled=None if enabled is None else torch.tensor(enabled))
    with torch.no_grad():
        got = block(x, "blk", ctx)
        h = layer_norm(block.norm1, x)
        joined = by_hand_attention(block.attn1, h, torch.cat([h, ref.expand(2, -1, -1)], dim=1))
        if enabled is not None:
            joined[0] = by_hand_attention(block.attn1, h[:1], h[:1])[0]
        x1 = x + joined
        want = x1 + geglu_ff(block.ff, layer_norm(block.norm3, x1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
