"""Seeds like the originals (emo_model/sampling/seed_stream.py, InferenceQuirks.seed_stream): with the "single" layout the
seed gives the very noise (and Hallo2's pixel-drop draws) the original's script draws from torch.manual_seed(seed),
checked against what the originals recorded in the parity fixtures; EMO's own per-clip layout is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_vae
from safetensors.torch import load_file

from emo_model.network.model import EMOModel
from emo_model.network.vae import DiffusersVAE
from emo_model.sampling import pipeline as pipeline_module
from emo_model.sampling.pipeline import EMOPipeline
from emo_model.sampling.settings import SamplingSettings
from emo_model.sampling.seed_stream import SeedStream, clip_seed

FIXTURES = Path(__file__).resolve().parent / "parity"


def test_per_clip_layout_is_emos_own_draws_unchanged():
    """The per-clip layout draws what EMO always drew: clip i from Generator(clip_seed(seed, i)), the pixel drop from
    clip_seed ^ 0xD209, context windows chunk by chunk (written out here, not through the class)."""
    s = SeedStream(7)
    for i in (0, 1, 2):
        drop, noise = s.clip(i, (1, 4, 3, 8, 8), (16, 16))
        assert torch.equal(noise, torch.randn((1, 4, 3, 8, 8), generator=torch.Generator().manual_seed(clip_seed(7, i))))
        assert torch.equal(drop, torch.rand((16, 16), generator=torch.Generator().manual_seed(clip_seed(7, i) ^ 0xD209)))
    video = SeedStream(7).video((1, 4, 10, 8, 8), 4)
    parts = [torch.randn((1, 4, n, 8, 8), generator=torch.Generator().manual_seed(clip_seed(7, k))) for k, n in enumerate((4, 4, 2))]
    assert torch.equal(video, torch.cat(parts, dim=2))


def test_single_layout_is_one_manual_seed_stream_in_the_scripts_order():
    g = torch.manual_seed(42)  # what the originals' scripts call: the global generator
    expected = []
    for _ in range(3):
        drop = torch.rand((16, 16))
        expected.append((drop, torch.randn((1, 4, 3, 8, 8), generator=g)))
    s = SeedStream(42, "single")
    for i, (drop, noise) in enumerate(expected):
        got = s.clip(i, (1, 4, 3, 8, 8), (16, 16))
        assert torch.equal(got[0], drop) and torch.equal(got[1], noise)
    assert s.clip(2)[1] is s.clip(2)[1]  # the current clip: drawn once, read again
    with pytest.raises(RuntimeError, match="out of order"):
        SeedStream(1, "single").clip(1, (1, 4, 1, 8, 8))
    with pytest.raises(ValueError, match="per_clip, single"):
        SeedStream(1, "sometimes")


def test_single_layout_draws_in_the_runs_dtype_as_a_half_original_does():
    """A half-precision original draws half noise; for some sizes that is not float noise rounded to half."""
    shape = (1, 4, 3, 5, 5)
    half = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float16)
    rounded = torch.randn(shape, generator=torch.Generator().manual_seed(3)).half()
    assert not torch.equal(half, rounded)  # why the dtype matters (torch's CPU sampler takes another path)
    got = SeedStream(3, "single", torch.float16).clip(0, shape)[1]
    assert got.dtype == torch.float32 and torch.equal(got, half.float())


def _fixture(name: str):
    path = FIXTURES / name
    return load_file(str(path / "stages.safetensors")), json.loads((path / "meta.json").read_text())


@pytest.mark.parametrize("family", ["hallo", "hallo2"])
def test_the_seed_gives_hallos_own_noise_and_pixel_drop(family):
    """Hallo's and Hallo2's scripts seed torch.manual_seed(42) and draw every clip's noise (Hallo2: its pixel-drop
    draws first) from it; the fixtures hold what the originals drew."""
    stages, meta = _fixture(family)
    stream = SeedStream(42, "single")
    clips = sorted(int(k.split(".")[0][4:]) for k in stages if k.endswith(".noise") and k.startswith("clip"))
    assert len(clips) >= 2
    for i in clips:
        recorded = stages[f"clip{i}.noise"]
        drop_key = f"clip{i}.drop_uniform"
        drop, noise = stream.clip(i, tuple(recorded.shape), tuple(stages[drop_key].shape) if drop_key in stages else None)
        assert torch.equal(noise, recorded), f"{family} clip {i}: our seed-42 noise is not the original's"
        if drop is not None:
            assert torch.equal(drop, stages[drop_key]), f"{family} clip {i}: pixel-drop draws differ"
    assert (family == "hallo2") == any(k.endswith(".drop_uniform") for k in stages)


def test_the_seed_gives_echomimics_own_noise():
    """EchoMimic's infer_audio2vid.py seeds torch.manual_seed(args.seed) and draws the whole video's noise at once (the
    harness ran it with seed 420 + its --seed)."""
    stages, meta = _fixture("echomimic")
    recorded = stages["input.noise"]
    ours = SeedStream(420 + meta["settings"]["seed"], "single").video(tuple(recorded.shape), meta["settings"]["context_frames"])
    assert torch.equal(ours, recorded)


def _run_and_capture(config: str, seed: int, frames: int):
    torch.manual_seed(0)
    model = EMOModel(config).eval()
    pipe = EMOPipeline(model, DiffusersVAE(tiny_vae()))
    g = torch.Generator().manual_seed(3)
    embedding = torch.randn(model.imageproj.cfg.embed_dim, generator=g) if model.imageproj is not None else None
    ref = pipe.encode_reference(torch.rand(64, 64, 3, generator=g), identity_embedding=embedding)
    captured = []
    real = pipeline_module._Run._scaled_noise

    def scaled(self, noise):
        captured.append(noise.clone())
        return real(self, noise)

    g1 = torch.Generator().manual_seed(1)
    if model.audioproj is not None:
        proj = model.audioproj.cfg
        feats = torch.randn(frames, proj.seq_len, proj.blocks, proj.channels, generator=g1)
    else:  # whisper tokens straight into attn2: [frames, tokens, width]
        feats = torch.randn(frames, 10, model.config.audio.dim, generator=g1)
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    regions = torch.stack([torch.ones(64, 64), mask, mask]) if model.config.backbone.region_audio_modules else None
    settings = SamplingSettings.from_preset(model.config.preset, steps=1, seed=seed)
    pipeline_module._Run._scaled_noise = scaled
    try:
        pipe.generate_frames(ref, feats, settings=settings, face_mask=mask, region_masks=regions)
    finally:
        pipeline_module._Run._scaled_noise = real
    return captured, settings, model


def test_the_pipeline_draws_from_the_families_stream():
    """Wiring: a Hallo2-layout run with seed 42 starts every clip from torch.manual_seed(42)'s draws in the script's
    order (pixel drop, then noise); an EchoMimic-layout run from one draw for the whole video; EMO's own per clip."""
    captured, settings, model = _run_and_capture("tiny-hallo2", 42, 9)
    g = torch.Generator().manual_seed(42)
    h = w = 64
    assert len(captured) >= 2
    for noise in captured:
        torch.rand((h, w), generator=g)  # Hallo2's rand_mask comes first in every clip
        assert torch.equal(noise, torch.randn(tuple(noise.shape), generator=g))
    captured, settings, model = _run_and_capture("tiny-echomimic", 420, 9)
    assert len(captured) == 1 and captured[0].shape[2] == 9
    assert torch.equal(captured[0], torch.randn(tuple(captured[0].shape), generator=torch.Generator().manual_seed(420)))
    captured, settings, model = _run_and_capture("tiny", 5, 9)
    assert torch.equal(captured[0], torch.randn(tuple(captured[0].shape), generator=torch.Generator().manual_seed(clip_seed(5, 0))))


def test_injected_noise_without_drop_draws_still_drops_pixels_from_the_seed():
    """Noise given (e.g. to reproduce another run) but no pixel-drop draws: the drop draws still come from the seed."""
    torch.manual_seed(0)
    model = EMOModel("tiny-hallo2").eval()
    pipe = EMOPipeline(model, DiffusersVAE(tiny_vae()))
    g = torch.Generator().manual_seed(3)
    ref = pipe.encode_reference(torch.rand(64, 64, 3, generator=g), identity_embedding=torch.randn(model.imageproj.cfg.embed_dim, generator=g))
    proj = model.audioproj.cfg
    feats = torch.randn(9, proj.seq_len, proj.blocks, proj.channels, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    settings = SamplingSettings.from_preset(model.config.preset, steps=1, seed=42)
    noise = torch.randn(model.config.latent_channels, 16, 8, 8, generator=torch.Generator().manual_seed(9))
    frames = pipe.generate_frames(ref, feats, settings=settings, face_mask=mask, noise=noise,
                                  region_masks=torch.stack([torch.ones(64, 64), mask, mask]))
    assert frames is not None


def test_only_the_current_clips_draws_are_held():
    """Memory does not grow with the video: drawing clip i releases the draws of the clips before it."""
    s = SeedStream(3, "single")
    for i in range(5):
        s.clip(i, (1, 4, 2, 8, 8), (16, 16))
    assert sum(v is not None for v in s._clips.values()) == 1
    with pytest.raises(RuntimeError, match="released"):
        s.clip(2)
