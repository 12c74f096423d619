"""A caller's initial noise and pixel-drop draws (``_Run._checked_noise``, ``_checked_draws``): bounds, float32, refusals;
and the clip inputs made from them on a bare ``_Run`` with stand-in parts (``_drop_pixels``, ``_clip_draws``, ``_noise``,
``_scaled_noise``, ``_row_bank``, ``_encode_motion``), each against values worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import bare_run, tiny_vae

from emo_model.network.context import ReferenceBank
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


# ---- the clip inputs on a bare _Run: stand-in stream, model and scheduler, values worked out by hand (first: fast) ---

class Stream:
    """A seed stream stand-in: ``clip(index, shape, drop_hw)`` records the call and makes the draws (made by hand from
    the index: pixel-drop draws ``drops[index]`` when drop_hw is given, noise = index + 0.5); ``clip(index)`` reads them."""

    def __init__(self, drops=None):
        self.drops, self.calls, self.made, self.generators = drops or {}, [], {}, []

    def clip(self, index, noise_shape=None, drop_hw=None):
        if noise_shape is not None:
            self.calls.append((index, noise_shape, drop_hw))
            drop = None if drop_hw is None else self.drops[index]
            self.made[index] = (drop, torch.full(noise_shape, index + 0.5))
        return self.made[index]

    def step_generator(self, index, device):
        self.generators.append((index, device))
        return ("generator", index)


# the pixel drop at rate 0.25 on a 2 x 3 portrait. Draws below, at and above the rate, outside and inside the face:
#   draws  [[0.10, 0.25, 0.90],   face [[no, no,  no ],   kept (draw > rate, or face)  [[no,  no,  yes],
#           [0.25, 0.00, 0.90]]         [no, yes, yes]]                               [no,  yes, yes]]
RATE = 0.25
DRAWS = torch.tensor([[0.10, 0.25, 0.90], [0.25, 0.00, 0.90]])
FACE = torch.tensor([[False, False, False], [False, True, True]])
KEPT = torch.tensor([[False, False, True], [False, True, True]])


def motion_frames_pixels(dtype) -> torch.Tensor:
    """Two motion frames [2, 2, 3, 3] with distinct values in (0, 1), none of them 0.5."""
    return ((torch.arange(36, dtype=torch.float64).reshape(2, 2, 3, 3) + 1) / 64).to(dtype)


def dropped_by_hand(frames: torch.Tensor) -> torch.Tensor:
    out = frames.clone()
    for y in range(2):
        for x in range(3):
            if not KEPT[y, x]:
                out[:, y, x, :] = 0.5  # every frame, every channel: one draw per pixel
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_pixel_drop_reads_the_callers_draws_of_the_clip_and_spares_the_face(dtype):
    # clip 0's draws would drop every pixel outside the face, clip 2's none: clip 1's are read
    draws = torch.stack([torch.zeros(2, 3), DRAWS, torch.ones(2, 3)])
    stream = Stream({1: torch.ones(2, 3)})  # the seed's draws (all kept) must not be read
    run = bare_run(drop_draws=draws, stream=stream, pixel_drop=RATE, face_pixels=FACE)
    frames = motion_frames_pixels(dtype)
    got = run._drop_pixels(frames, 1)
    assert got.dtype == dtype and tuple(got.shape) == (2, 2, 3, 3)
    assert torch.equal(got, dropped_by_hand(frames))
    assert stream.calls == [] and stream.made == {}


def test_pixel_drop_without_the_callers_draws_reads_the_seeds_draws_of_the_clip():
    stream = Stream({0: torch.zeros(2, 3), 1: DRAWS})
    run = bare_run(drop_draws=None, stream=stream, pixel_drop=RATE, face_pixels=FACE)
    stream.clip(0, (1, 1), (2, 3))
    stream.clip(1, (1, 1), (2, 3))  # noise [1, 1] = 1.5: a draw of 1.5 would keep every pixel
    frames = motion_frames_pixels(torch.float32)
    assert torch.equal(run._drop_pixels(frames, 1), dropped_by_hand(frames))


def clip_draws_run(pixel_drop: float, drop_draws) -> _Run:
    model = SimpleNamespace(config=SimpleNamespace(latent_channels=4))
    return bare_run(model=model, latent_hw=(8, 16), ref=SimpleNamespace(size=(64, 128)), pixel_drop=pixel_drop,
                drop_draws=drop_draws, stream=Stream({2: DRAWS}))


@pytest.mark.parametrize("pixel_drop,callers,drop_hw", [
    (0.25, False, (64, 128)),  # the seed draws the pixel-drop draws (portrait size), then the noise
    (0.25, True, None),  # the caller's draws: the seed draws the noise only
    (0.0, False, None),  # no pixel drop: no draws for it
    (0.0, True, None),
])
def test_clip_draws_asks_the_stream_for_the_clips_noise_and_pixel_drop_draws_only_when_the_seed_gives_them(pixel_drop, callers,
                                                                                                          drop_hw):
    run = clip_draws_run(pixel_drop, torch.zeros(3, 64, 128) if callers else None)
    run._clip_draws(2, 5)
    assert run.stream.calls == [(2, (1, 4, 5, 8, 16), drop_hw)]


def noise_run(initial_noise, clamp) -> _Run:
    run = clip_draws_run(0.0, None)
    run.__dict__.update(initial_noise=initial_noise, device="cpu", quirks=SimpleNamespace(initial_noise_clamp=clamp),
                        scheduler=SimpleNamespace(init_noise_sigma=3.0))
    return run


@pytest.mark.parametrize("clamp,expected", [
    (2.0, [-6.0, -6.0, -3.0, 1.5, 6.0, 6.0]),  # clamped to [-2, 2], then times sigma 3
    (None, [-15.0, -6.0, -3.0, 1.5, 6.0, 12.0]),  # not clamped
])
def test_scaled_noise_is_clamped_when_the_quirk_says_then_times_the_initial_sigma(clamp, expected):
    noise = torch.tensor([-5.0, -2.0, -1.0, 0.5, 2.0, 4.0])
    assert torch.equal(noise_run(None, clamp)._scaled_noise(noise), torch.tensor(expected))


def test_noise_of_a_clip_is_the_callers_frames_from_start_scaled():
    # 2 channels, 6 frames of 1 x 1 latents: value 10 * channel + frame; frames [3, 5) of both channels, times sigma 3
    initial = (10 * torch.arange(2.0)[:, None] + torch.arange(6.0)[None]).reshape(2, 6, 1, 1)
    run = noise_run(initial, None)
    noise, generator = run._noise(2, 1, start=3)
    assert tuple(noise.shape) == (1, 2, 2, 1, 1)
    assert torch.equal(noise.flatten(), 3 * torch.tensor([3.0, 4.0, 13.0, 14.0]))
    assert generator == ("generator", 1) and run.stream.generators == [(1, "cpu")]
    assert run.stream.calls == []  # the seed draws nothing
    noise, _ = run._noise(2, 0)  # start defaults to frame 0: frames [0, 2)
    assert torch.equal(noise.flatten(), 3 * torch.tensor([0.0, 1.0, 10.0, 11.0]))


def test_noise_of_a_clip_without_the_callers_noise_is_the_seeds_scaled():
    run = noise_run(None, None)
    noise, generator = run._noise(5, 2)
    assert run.stream.calls == [(2, (1, 4, 5, 8, 16), None)]
    assert torch.equal(noise, torch.full((1, 4, 5, 8, 16), 3 * 2.5))  # clip 2's noise 2.5, times sigma 3
    assert generator == ("generator", 2) and run.stream.generators == [(2, "cpu")]


class Model:
    """A model stand-in: encode_reference / encode_motion record their arguments and return tokens made from them."""

    def __init__(self):
        self.calls = []

    def encode_reference(self, latent, identity):
        self.calls.append(("reference", latent, identity))
        return ReferenceBank({"a": torch.full((1, 2, 3), 3.0), "b": torch.full((1, 1, 2), 4.0)})

    def encode_motion(self, latents, identity):
        self.calls.append(("motion", latents, identity))
        return {"a": latents}


def identities() -> SimpleNamespace:
    # identity tokens [1, 2, 3]: conditional ones all 1, unconditional all -1
    return SimpleNamespace(latent=torch.zeros(1, 4, 8, 16), identity_tokens=torch.ones(1, 2, 3),
                           identity_uncond=-torch.ones(1, 2, 3))


@pytest.mark.parametrize("motion_frames,second", [
    (0, "cond"), (2, "cond"), (4, "cond"),  # block 1's portrait is row n + 1: odd, the conditional identity
    (1, "uncond"), (3, "uncond"),  # row n + 1 even: the unconditional identity
])
def test_row_bank_is_block_0s_unconditional_portrait_then_block_1s_by_the_parity_of_its_row(motion_frames, second):
    ref, model = identities(), Model()
    run = bare_run(model=model, ref=ref, s=SimpleNamespace(motion_frames=motion_frames))
    cond = ReferenceBank({"a": torch.full((1, 2, 3), 7.0), "b": torch.full((1, 1, 2), 8.0)})
    bank = run._row_bank(cond)
    assert len(model.calls) == 1
    kind, latent, identity = model.calls[0]
    assert kind == "reference" and latent is ref.latent and identity is ref.identity_uncond
    assert sorted(bank.tokens) == ["a", "b"] and bank.motion is None
    block_1 = {"a": 7.0, "b": 8.0} if second == "cond" else {"a": 3.0, "b": 4.0}
    assert torch.equal(bank.tokens["a"], torch.cat([torch.full((1, 2, 3), 3.0), torch.full((1, 2, 3), block_1["a"])]))
    assert torch.equal(bank.tokens["b"], torch.cat([torch.full((1, 1, 2), 4.0), torch.full((1, 1, 2), block_1["b"])]))


def motion_latents(n: int) -> torch.Tensor:
    """Motion latents [1, n, C = 4, h = 3, w = 5] (C, h, w != n and != 1: a wrong axis or expand shows)."""
    return torch.arange(n * 60, dtype=torch.float32).reshape(1, n, 4, 3, 5)


def test_shared_motion_features_read_the_conditional_identity():
    ref, model = identities(), Model()
    run = bare_run(model=model, ref=ref, per_branch_motion=False, branches=["uncond", "full"])
    latents = motion_latents(2)
    assert run._encode_motion(latents)["a"] is latents
    assert len(model.calls) == 1
    kind, got, identity = model.calls[0]
    assert kind == "motion" and got is latents and identity is ref.identity_tokens


@pytest.mark.parametrize("n,branches,rows", [
    # block 0 (uncond) frame k is row k, block 1 (conditional) row n + 1 + k; even rows read the unconditional identity
    (2, ["uncond", "full"], "CU" + "UC"),  # uncond rows 1, 2; full rows 4, 5
    (3, ["uncond", "reference", "full"], "CUC" + "CUC" + "CUC"),  # uncond rows 1..3; conditional rows 5..7
    (4, ["full", "uncond"], "UCUC" + "CUCU"),  # full rows 6..9, uncond rows 1..4 (in the branches' order)
])
def test_per_branch_motion_features_read_the_identity_of_their_row_in_the_originals_batch(n, branches, rows):
    ref, model = identities(), Model()
    run = bare_run(model=model, ref=ref, per_branch_motion=True, branches=branches)
    latents = motion_latents(n)
    run._encode_motion(latents)
    assert len(model.calls) == 1
    kind, got, identity = model.calls[0]
    assert kind == "motion" and tuple(got.shape) == (len(branches), n, 4, 3, 5)
    for b in range(len(branches)):
        assert torch.equal(got[b], latents[0]), b
    by_hand = torch.cat([ref.identity_tokens if r == "C" else ref.identity_uncond for r in rows])
    assert tuple(identity.shape) == (len(rows), 2, 3) and torch.equal(identity, by_hand)


# ---- a caller's noise and draws through EMOPipeline.generate (the tiny model) ----------------------------------------

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
