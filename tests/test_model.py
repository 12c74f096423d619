"""EMO model core: checkpoint layouts (meta device) and behavioural tests on the tiny configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import perturb_zero_inits

from emo_model.configs import EMOConfig
from emo_model.families import CONFIGS, get_config
from emo_model.network.attention import Attention, reference_attention
from emo_model.network.context import ReferenceBank
from emo_model.network.model import Conditioning, EMOModel
from emo_model.network.motion_frames import first_clip_motion
from emo_model.network.speed_layers import SpeedEncoder, speed_buckets


def _layout(layouts_dir, name: str) -> dict[str, tuple[int, ...]]:
    data = json.loads((layouts_dir / name).read_text())
    return {k: tuple(v["shape"]) for k, v in data["tensors"].items()}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _diff(mine: dict, theirs: dict) -> dict:
    return {
        "missing": sorted(set(theirs) - set(mine)),
        "unexpected": sorted(set(mine) - set(theirs)),
        "shape": sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k]),
    }


NO_DIFF = {"missing": [], "unexpected": [], "shape": []}

# The checkpoints' ``pos_encoder.pe`` buffers are sinusoid tables that we recompute (same shape, max
# length 32); they are part of our state dict, so they appear in the comparison like any other key.
# No other difference exists: every key and shape is equal.
LAYOUT_CASES = [
    ("hallo", "reference_unet", "hallo_reference_unet.json"),
    ("hallo", "denoising_unet", "hallo_denoising_unet.json"),
    ("hallo", "face_locator", "hallo_face_locator.json"),
    ("hallo", "audioproj", "hallo_audio_proj.json"),
    ("hallo", "imageproj", "hallo_image_proj.json"),
    ("echomimic-v1", "reference_unet", "echomimic_reference_unet.json"),
    ("echomimic-v1", "denoising_unet", "echomimic_denoising_unet_full_model.json"),
    ("echomimic-v1", "face_locator", "echomimic_face_locator.json"),
]


@pytest.fixture(scope="module")
def meta_models():
    with torch.device("meta"):
        return {name: EMOModel(name) for name in ("hallo", "echomimic-v1", "emo")}


@pytest.mark.parametrize("config,attr,layout", LAYOUT_CASES)
def test_full_size_layout_matches_checkpoint(meta_models, layouts_dir, config, attr, layout):
    module = getattr(meta_models[config], attr)
    assert next(module.parameters()).is_meta  # nothing was allocated
    assert _diff(_shapes(module), _layout(layouts_dir, layout)) == NO_DIFF


def test_hallo_whole_net_matches_net_pth(meta_models, layouts_dir):
    assert _diff(_shapes(meta_models["hallo"]), _layout(layouts_dir, "hallo_net.json")) == NO_DIFF


def test_motion_modules_match_animatediff_v2(meta_models, layouts_dir):
    mine = {k: v for k, v in _shapes(meta_models["emo"].denoising_unet).items() if ".motion_modules." in k and ".speed_" not in k}
    assert _diff(mine, _layout(layouts_dir, "animatediff_mm_sd_v15_v2.json")) == NO_DIFF


def test_emo_config_has_speed_layers_and_no_reference_cross_attention(meta_models):
    emo = meta_models["emo"]
    keys = emo.state_dict().keys()
    assert sum(".speed_attn.to_q." in k for k in keys) == 21  # one per temporal module
    assert any(k.startswith("speed_encoder.mlp.") for k in keys)
    assert not any(k.startswith("reference_unet.") and ".attn2." in k for k in keys)
    assert any(k.startswith("denoising_unet.") and k.endswith("attn2.to_k.weight") for k in keys)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_round_trip_through_json(name):
    cfg = get_config(name)
    assert EMOConfig.from_json(cfg.to_json()) == cfg


def test_config_validation_rejects_inconsistent_audio_width():
    cfg = get_config("tiny")
    with pytest.raises(ValueError, match="cross_attention_dim"):
        cfg.replace(backbone=cfg.backbone.__class__(unet=cfg.backbone.unet.__class__(cross_attention_dim=12))).validate()


# --------------------------------------------------------------------------------------------------
# Attention


def _manual_attention(attn: Attention, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    ctx = x if extra is None else torch.cat([x, extra], dim=1)
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
    b, n, _ = q.shape
    split = lambda t: t.view(b, t.shape[1], attn.heads, attn.head_dim).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(attn.head_dim), dim=-1)
    out = (w @ split(v)).transpose(1, 2).reshape(b, n, -1)
    return attn.to_out[0](out)


def test_reference_attention_with_empty_bank_is_self_attention():
    torch.manual_seed(0)
    attn = Attention(16, heads=2, head_dim=8)
    x = torch.randn(3, 10, 16)
    empty = attn.project_kv(torch.zeros(1, 0, 16))
    torch.testing.assert_close(reference_attention(attn, x, empty, None), _manual_attention(attn, x))
    torch.testing.assert_close(reference_attention(attn, x, None, None), _manual_attention(attn, x))


def test_reference_attention_concatenates_reference_tokens_and_respects_enabled_rows():
    torch.manual_seed(0)
    attn = Attention(16, heads=2, head_dim=8)
    x, ref = torch.randn(3, 10, 16), torch.randn(1, 7, 16)
    kv = attn.project_kv(ref)
    out = reference_attention(attn, x, kv, torch.tensor([True, False, True]))
    expected_on = _manual_attention(attn, x, ref.expand(3, -1, -1))
    torch.testing.assert_close(out[[0, 2]], expected_on[[0, 2]])
    torch.testing.assert_close(out[1], _manual_attention(attn, x)[1])
    assert not torch.allclose(out[0], _manual_attention(attn, x)[0], atol=1e-4)


# --------------------------------------------------------------------------------------------------
# The tiny model


def _tiny(name: str = "tiny", seed: int = 0) -> EMOModel:
    torch.manual_seed(seed)
    return perturb_zero_inits(EMOModel(name).eval())


def _inputs(model: EMOModel, frames: int = 8, motion: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    size = cfg.preset.resolution // cfg.vae_scale_factor
    sample = torch.randn(1, cfg.latent_channels, frames, size, size, generator=g)
    ref = torch.randn(1, cfg.latent_channels, size, size, generator=g)
    motion_latents = torch.randn(1, motion, cfg.latent_channels, size, size, generator=g)
    a = cfg.audio
    if cfg.audio_proj is not None:
        feats = torch.randn(frames, a.window, a.layers, a.dim, generator=g)
    else:
        feats = torch.randn(frames, (a.whisper_window[1] - a.whisper_window[0]) * a.layers, a.dim, generator=g)
    mask = torch.zeros(1, cfg.preset.resolution, cfg.preset.resolution)
    mask[:, 16:48, 16:48] = 1
    return sample, ref, motion_latents, feats, mask


def _cond(model: EMOModel, ref, motion_latents, feats, mask, *, speed=0.7, motion=True, frames=8) -> Conditioning:
    ident = model.identity_tokens(None)
    bank = model.encode_reference(ref, ident)
    if motion:
        bank.motion = model.encode_motion(motion_latents, ident)
    n = motion_latents.shape[1] if motion else 0
    speeds = torch.full((1, n + frames), float(speed))
    region = None
    if model.config.backbone.region_audio_modules:
        region = torch.stack([1 - mask, mask * 0.7, mask * 0.3], dim=1)
    return Conditioning(
        reference=bank,
        audio_tokens=model.audio_tokens(feats),
        identity_tokens=ident,
        face_features=model.face_features(mask),
        region_masks=region,
        speed_tokens=model.speed_tokens(speeds),
    )


@pytest.mark.parametrize("name", ["tiny", "tiny-hallo", "tiny-echomimic"])
def test_forward_shapes_for_every_family(name):
    model = _tiny(name)
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        out = model(sample, 500, _cond(model, ref, motion, feats, mask))
    assert out.shape == sample.shape
    assert torch.isfinite(out).all()


def test_empty_reference_bank_equals_no_reference_and_reference_changes_output():
    model = _tiny()
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        cond = _cond(model, ref, motion, feats, mask, motion=False)
        with_ref = model(sample, 300, cond)
        cond.reference = ReferenceBank()
        empty = model(sample, 300, cond)
        cond.reference = None
        none = model(sample, 300, cond)
        cond.reference = model.encode_reference(ref)
        cond.reference_enabled = torch.tensor([False])
        disabled = model(sample, 300, cond)
    torch.testing.assert_close(empty, none)
    torch.testing.assert_close(disabled, none)
    assert (with_ref - none).abs().max() > 1e-3


def test_unconditional_rows_of_a_batched_clip_skip_reference_attention_only_there():
    model = _tiny()
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        cond = _cond(model, ref, motion, feats, mask)
        on = model(sample, 500, cond)
        cond.reference_enabled = torch.tensor([False])
        off = model(sample, 500, cond)
        cond.reference_enabled = torch.tensor([False, True])
        batched = model(sample.expand(2, -1, -1, -1, -1), 500, cond)
        again = model(sample.expand(2, -1, -1, -1, -1), 500, cond)
    assert torch.equal(batched, again)  # deterministic: no uninitialised rows
    torch.testing.assert_close(batched[0], off[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[1], on[0], atol=1e-5, rtol=1e-4)


def test_reference_kv_cache_gives_the_same_result():
    model = _tiny()
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        cond = _cond(model, ref, motion, feats, mask)
        direct = model(sample, 700, cond)
        cond.reference_kv = model.denoising_unet.project_reference(cond.reference)
        cached = model(sample, 700, cond)
    torch.testing.assert_close(cached, direct)


def _frame_influence(model: EMOModel, temporal: bool) -> float:
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        cond = _cond(model, ref, motion, feats, mask, motion=False)
        cond.temporal = temporal
        base = model(sample, 400, cond)
        changed = sample.clone()
        changed[:, :, 0] += torch.randn_like(changed[:, :, 0])
        other = model(changed, 400, cond)
    assert (other[:, :, 0] - base[:, :, 0]).abs().max() > 1e-3  # the edited frame itself changes
    return float((other[:, :, 1:] - base[:, :, 1:]).abs().max())


def test_frames_are_independent_without_temporal_modules_and_coupled_with_them():
    model = _tiny()
    assert _frame_influence(model, temporal=False) < 1e-5
    assert _frame_influence(model, temporal=True) > 1e-3


def test_motion_frames_change_the_output_but_not_the_frame_count():
    model = _tiny()
    sample, ref, motion, feats, mask = _inputs(model, motion=3)
    with torch.no_grad():
        without = model(sample, 500, _cond(model, ref, motion, feats, mask, motion=False))
        with_m = model(sample, 500, _cond(model, ref, motion, feats, mask, motion=True))
        other_motion = model(sample, 500, _cond(model, ref, motion.flip(1) + 0.5, feats, mask, motion=True))
    assert with_m.shape == without.shape == sample.shape
    assert (with_m - without).abs().max() > 1e-3
    assert (other_motion - with_m).abs().max() > 1e-3


def test_first_clip_motion_modes():
    model = _tiny()
    _, ref, *_ = _inputs(model)
    bank = model.encode_reference(ref)
    zeros = first_clip_motion(bank, 3, "zeros")
    same = first_clip_motion(bank, 3, "reference")
    key = next(iter(bank.tokens))
    assert zeros[key].shape == (1, 3, *bank.tokens[key].shape[1:]) and not zeros[key].any()
    torch.testing.assert_close(same[key][:, 2], bank.tokens[key])
    assert first_clip_motion(bank, 0, "zeros") is None


def test_zero_initialised_face_locator_adds_nothing():
    torch.manual_seed(0)
    model = EMOModel("tiny").eval()  # fresh: Face Locator conv_out is zero
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        cond = _cond(model, ref, motion, feats, mask)
        assert not cond.face_features.any()
        with_mask = model(sample, 500, cond)
        cond.face_features = None
        without = model(sample, 500, cond)
        torch.testing.assert_close(with_mask, without)
        perturb_zero_inits(model.face_locator)
        cond.face_features = model.face_features(mask)
        trained = model(sample, 500, cond)
    assert (trained - without).abs().max() > 1e-4


def test_speed_buckets_rise_monotonically_with_speed():
    cfg = get_config("emo").speed
    enc = SpeedEncoder(cfg)
    w = torch.linspace(0.0, 2.5, 200)
    s = enc.buckets(w)  # [200, d]
    assert s.shape == (200, cfg.num_buckets)
    assert (s.diff(dim=0) >= 0).all()  # every bucket rises with w
    assert (s.sum(dim=1).diff() > 0).all()  # and the code as a whole strictly does
    expected = torch.tanh((0.7 - torch.tensor(cfg.centres)) / torch.tensor(cfg.radii) * 3)
    torch.testing.assert_close(speed_buckets(torch.tensor([0.7]), torch.tensor(cfg.centres), torch.tensor(cfg.radii))[0], expected)


def test_speed_tokens_stack_neighbouring_frames_and_change_the_output():
    model = _tiny()
    enc = model.speed_encoder
    ramp = torch.linspace(0.1, 1.2, 10)[None]
    tokens = enc(ramp)
    assert tokens.shape == (1, 10, model.config.speed.embed_dim)
    # a change at frame 5 reaches frames 3..7 (margin 2) and no others
    bumped = ramp.clone()
    bumped[0, 5] += 0.5
    moved = (enc(bumped) - tokens).abs().amax(-1)[0]
    assert (moved[3:8] > 0).all() and (moved[:3] == 0).all() and (moved[8:] == 0).all()
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        slow = model(sample, 500, _cond(model, ref, motion, feats, mask, speed=0.1))
        fast = model(sample, 500, _cond(model, ref, motion, feats, mask, speed=1.3))
    assert (slow - fast).abs().max() > 1e-4


def test_audio_changes_the_output_in_both_audio_layouts():
    for name in ("tiny", "tiny-hallo", "tiny-echomimic"):
        model = _tiny(name)
        sample, ref, motion, feats, mask = _inputs(model)
        with torch.no_grad():
            cond = _cond(model, ref, motion, feats, mask)
            a = model(sample, 500, cond)
            cond.audio_tokens = torch.zeros_like(cond.audio_tokens)
            b = model(sample, 500, cond)
        assert (a - b).abs().max() > 1e-4, name


def test_bf16_forward_agrees_with_fp32():
    model = _tiny()
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        ref32 = model(sample, 500, _cond(model, ref, motion, feats, mask))
        model16 = model.to(torch.bfloat16)
        out16 = model16(sample.bfloat16(), 500, _cond(model16, ref.bfloat16(), motion.bfloat16(), feats.bfloat16(), mask))
    assert out16.dtype == torch.bfloat16
    err = (out16.float() - ref32).abs()
    scale = ref32.abs().mean()
    # bf16 keeps 8 bits of mantissa (~0.4% per op); across ~100 layers allow a few percent on average
    assert err.mean() / scale < 0.03 and err.max() / ref32.abs().max() < 0.1


def test_gradient_checkpointing_gives_identical_gradients():
    def grads(checkpointing: bool):
        model = _tiny().train()
        model.set_gradient_checkpointing(checkpointing)
        sample, ref, motion, feats, mask = _inputs(model)
        out = model(sample, 500, _cond(model, ref, motion, feats, mask))
        out.square().mean().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    assert any(k.startswith("reference_unet.") for k in plain)  # gradients reach the ReferenceNet via the bank
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-4, atol=1e-6)


# ---- family inference quirks (InferenceQuirks on the preset) -----------------------------------------


def _plain_level_temporal_params(model: EMOModel) -> list[torch.nn.Parameter]:
    """Parameters of the temporal modules in UNet levels without spatial transformers."""
    unet = model.denoising_unet
    blocks = [b for b in list(unet.down_blocks) + list(unet.up_blocks) if not len(b.attentions)]
    assert blocks, "the tiny configs have a level without attention (as SD1.5 does)"
    return [p for b in blocks for p in b.motion_modules.parameters()]


@pytest.mark.parametrize("name,expect_effect", [("tiny-hallo", False), ("tiny", True)])
def test_temporal_modules_of_plain_levels_run_only_where_the_family_runs_them(name, expect_effect):
    model = _tiny(name)
    assert model.config.preset.quirks.temporal_in_plain_blocks is expect_effect
    sample, ref, motion, feats, mask = _inputs(model)
    with torch.no_grad():
        cond = _cond(model, ref, motion, feats, mask)
        before = model(sample, 500, cond)
        for p in _plain_level_temporal_params(model):
            p.add_(torch.randn_like(p) * 0.5)
        after = model(sample, 500, cond)
    changed = float((after - before).abs().max())
    assert (changed > 1e-3) if expect_effect else (changed == 0.0), changed


def test_audio_attention_scale_multiplies_the_attn2_output_of_the_backbone():
    from emo_model.network.context import ForwardContext

    model = _tiny("tiny-echomimic")
    assert model.config.preset.quirks.audio_attention_scale == 3.0
    assert get_config("echomimic-v1").preset.quirks.audio_attention_scale == 3.0
    assert get_config("emo").preset.quirks.audio_attention_scale == 1.0
    block = model.denoising_unet.down_blocks[0].attentions[0].transformer_blocks[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, block.norm1.normalized_shape[0], generator=g)
    audio = torch.randn(2, 10, block.attn2.to_k.in_features, generator=g)
    with torch.no_grad():
        got = block(x, "k", ForwardContext(cross_context=audio, cross_attention_scale=3.0))
        # the block written out by hand: x + attn1(norm1 x); + 3 * attn2(norm2 x, audio); + ff(norm3 x)
        h = x + block.attn1(block.norm1(x))
        h = h + 3.0 * block.attn2(block.norm2(h), audio)
        want = h + block.ff(block.norm3(h))
    torch.testing.assert_close(got, want)


def test_native_files_without_quirks_take_their_named_configs_quirks():
    from emo_model.weights.checkpoints import _with_named_quirks

    cfg = get_config("tiny-hallo")
    data = cfg.to_dict()
    del data["preset"]["quirks"]
    old = EMOConfig.from_dict(data)
    assert old.preset.quirks.temporal_in_plain_blocks is True  # the dataclass default
    fixed = _with_named_quirks(old, json.dumps(data))
    assert fixed.preset.quirks.temporal_in_plain_blocks is False
    assert _with_named_quirks(old, cfg.to_json()) is old
    # a file that has some quirks but predates others (and a newer scheduler option): only the missing
    # keys are filled, the stored ones win
    data = cfg.to_dict()
    del data["preset"]["quirks"]["reference_rows_tiled"], data["preset"]["scheduler"]["set_alpha_to_one"]
    data["preset"]["quirks"]["temporal_in_plain_blocks"] = True
    data["preset"]["steps"] = 7
    partial = EMOConfig.from_dict(data)
    fixed = _with_named_quirks(partial, json.dumps(data))
    assert fixed.preset.quirks.reference_rows_tiled is cfg.preset.quirks.reference_rows_tiled is True
    assert fixed.preset.scheduler.set_alpha_to_one is cfg.preset.scheduler.set_alpha_to_one is True
    assert fixed.preset.quirks.temporal_in_plain_blocks is True and fixed.preset.steps == 7
