"""A caller's initial noise and pixel-drop draws (``_Run._checked_noise``, ``_checked_draws``): bounds, float32, refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vae

from emo_model.network.model import EMOModel
from emo_model.network.vae import DiffusersVAE
from emo_model.sampling.clip_loop import _Run
from emo_model.sampling.colour_match import colour_stats
from emo_model.sampling.pipeline import EMOPipeline
from emo_model.sampling.reference_state import ReferenceState
from emo_model.sampling.settings import SamplingSettings

# By hand, for the whole file: the tiny model has 4 latent channels and a /8 VAE. The portrait is 64 x 128 pixels
# (height != width, so a message that swapped them would show), its latent 8 x 16. 13 frames in clips of 6:
# clips [0, 6), [6, 12), [12, 13) -> 3 clips; the last clip padded to 6 frames (pad_last_clip) ends at 12 + 6 = 18,
# unpadded at 13. Context windows denoise the 13 frames themselves (no padded clip), with or without pad_last_clip.
C, LH, LW, H, W = 4, 8, 16, 64, 128
FRAMES, CLIPS = 13, 3
NEEDED = [("motion_frames", True, 18), ("motion_frames", False, 13),
          ("context_windows", True, 13), ("context_windows", False, 13)]


@pytest.fixture(scope="module")
def pipe_ref():
    torch.manual_seed(0)
    model = EMOModel("tiny").eval()
    pipe = EMOPipeline(model, DiffusersVAE(tiny_vae()))
    # encode_reference makes square portraits at the model size; this one is encoded here at 64 x 128
    image = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        latent = pipe.codec.encode(image[None])
        bank = model.encode_reference(latent, None)
    assert tuple(latent.shape) == (1, C, LH, LW)
    return pipe, ReferenceState(image, latent, bank, None, None, colour_stats(image))


def settings(pipe, strategy: str, pad: bool, **kw) -> SamplingSettings:
    return SamplingSettings.from_preset(pipe.config.preset, steps=1, cfg=1.0, audio_cfg=1.0, sampler="ddim", strategy=strategy,
                                        frames_per_clip=6, context_overlap=3, pad_last_clip=pad, **kw)


def features(pipe, frames: int = FRAMES) -> torch.Tensor:
    proj = pipe.model.audioproj.cfg
    return torch.randn(frames, proj.seq_len, proj.blocks, proj.channels, generator=torch.Generator().manual_seed(1))


def checked(monkeypatch, pipe_ref, strategy="motion_frames", pad=True, noise=None, draws=None) -> _Run:
    """The run after its inputs were checked (the clips themselves are not generated)."""
    pipe, ref = pipe_ref
    runs: list[_Run] = []

    def stop(self):
        runs.append(self)
        return 0

    monkeypatch.setattr(_Run, "motion_frames", stop)
    monkeypatch.setattr(_Run, "context_windows", stop)
    pipe.generate(ref, features(pipe), settings=settings(pipe, strategy, pad), sink=lambda f: None, noise=noise,
                  motion_drop_draws=draws)
    monkeypatch.undo()
    assert len(runs) == 1
    return runs[0]


def noise_of(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)


def noise_refusal(frames: int, got: list[int]) -> str:
    return (f"noise must be [channels, frames, height, width] = [4, >={frames}, 8, 16] (latent channels, every generated "
            f"frame, latent size), got {got}; or pass noise=None")


def draws_refusal(got: list[int]) -> str:
    return (f"motion_drop_draws must be [clips, height, width] = [>=3, 64, 128] (one uniform draw per pixel and clip), "
            f"got {got}; or pass motion_drop_draws=None")


def refused(monkeypatch, pipe_ref, strategy="motion_frames", pad=True, noise=None, draws=None) -> str:
    with pytest.raises(ValueError) as e:
        checked(monkeypatch, pipe_ref, strategy, pad, noise, draws)
    monkeypatch.undo()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("strategy,pad,needed", NEEDED)
def test_noise_of_every_generated_frame_is_accepted_as_float32_and_one_frame_less_refused(monkeypatch, pipe_ref, strategy, pad,
                                                                                          needed):
    for frames in (needed, needed + 2):  # exactly the frames needed; more are accepted (and kept)
        for dtype in (torch.float32, torch.float64, torch.float16):
            noise = noise_of(C, frames, LH, LW, dtype=dtype)
            got = checked(monkeypatch, pipe_ref, strategy, pad, noise=noise).initial_noise
            assert got.dtype == torch.float32 and tuple(got.shape) == (C, frames, LH, LW)
            assert torch.equal(got, noise.float()), (frames, dtype)
    message = refused(monkeypatch, pipe_ref, strategy, pad, noise=noise_of(C, needed - 1, LH, LW))
    assert message == noise_refusal(needed, [C, needed - 1, LH, LW])


@pytest.mark.parametrize("shape", [
    (C, 18, LH),  # no width
    (1, C, 18, LH, LW),  # a batch dimension
    (3, 18, LH, LW),  # channels
    (5, 18, LH, LW),
    (C, 18, LH - 1, LW),  # height
    (C, 18, LH, LW + 1),  # width
    (C, 18, LW, LH),  # height and width swapped
])
def test_noise_of_another_shape_is_refused_in_one_line(monkeypatch, pipe_ref, shape):
    assert refused(monkeypatch, pipe_ref, noise=noise_of(*shape)) == noise_refusal(18, list(shape))


def test_the_network_gets_the_callers_noise_in_float32(monkeypatch, pipe_ref):
    """DDIM, 1 step, no motion frames: its initial sigma is 1 and it feeds the latents unscaled, so clip k's one
    forward gets the float64 noise's frames [6k, 6k + 6) rounded to float32 (the last clip padded to 6: 18 in all)."""
    pipe, ref = pipe_ref
    received: list[torch.Tensor] = []

    def net(sample, timestep, cond):
        received.append(sample.detach().clone())
        return 0.5 * sample

    monkeypatch.setattr(pipe.model, "forward", net)
    noise = noise_of(C, 18, LH, LW, dtype=torch.float64)
    pipe.generate(ref, features(pipe), settings=settings(pipe, "motion_frames", True, motion_frames=0), sink=lambda f: None,
                  noise=noise)
    monkeypatch.undo()
    assert len(received) == 3
    for k, sample in enumerate(received):
        assert sample.dtype == torch.float32
        assert torch.equal(sample, noise[:, 6 * k: 6 * k + 6].float()[None]), k


@pytest.mark.parametrize("strategy,pad", [("motion_frames", True), ("motion_frames", False), ("context_windows", True)])
def test_draws_of_every_clip_are_accepted_as_float32_on_the_cpu_and_one_clip_less_refused(monkeypatch, pipe_ref, strategy,
                                                                                            pad):
    for clips in (CLIPS, CLIPS + 2):
        for dtype in (torch.float32, torch.float64, torch.float16):
            draws = torch.rand(clips, H, W, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)
            got = checked(monkeypatch, pipe_ref, strategy, pad, draws=draws).drop_draws
            assert got.dtype == torch.float32 and got.device.type == "cpu" and tuple(got.shape) == (clips, H, W)
            assert torch.equal(got, draws.float()), (clips, dtype)
    message = refused(monkeypatch, pipe_ref, strategy, pad, draws=torch.rand(CLIPS - 1, H, W))
    assert message == draws_refusal([CLIPS - 1, H, W])


@pytest.mark.parametrize("shape", [(H, W), (1, CLIPS, H, W), (CLIPS, H - 1, W), (CLIPS, H, W + 1), (CLIPS, W, H)])
def test_draws_of_another_shape_are_refused_in_one_line(monkeypatch, pipe_ref, shape):
    assert refused(monkeypatch, pipe_ref, draws=torch.rand(*shape)) == draws_refusal(list(shape))
