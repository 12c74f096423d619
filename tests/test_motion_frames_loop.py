"""The motion-frames loop (``_Run.motion_frames``) on a bare ``_Run`` whose pieces are recording stand-ins: the clips,
each clip's audio / speed / pose / emotion frames, the motion frames it reads (none, the first clip's, the previous
clip's latents or decoded pixels), steps, reports and what is emitted, each against values worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from conftest import bare_run

from emo_model.sampling import clip_loop

C = 1  # latent channels; latents are [1, C, F, 1, 1] whose value is the frame's number (+ 1 per step)
PIXELS = (2, 2, 3)


class Scheduler:
    def __init__(self):
        self.timesteps = []

    def set_timesteps(self, steps, device=None):
        self.timesteps = [900 - 100 * k for k in range(steps)]


class Codec:
    """encode: pixel frames [n, 2, 2, 3] -> latents [n, C, 1, 1] (float32) holding the frame's mean + 1000."""

    def __init__(self):
        self.encoded = []

    def encode(self, frames):
        self.encoded.append(frames.clone())
        return (frames.float().mean(dim=(1, 2, 3)) + 1000).reshape(-1, C, 1, 1)


def make_run(monkeypatch, n=2, steps=2, frames=13, per_clip=6, pad=True, pixel_drop=0.0, from_pixels=False,
             first="zeros"):
    log: dict[str, list] = {k: [] for k in ["draws", "first", "motion", "drop", "pose", "phases", "predict", "report", "emit",
                                            "noise", "caches", "folded", "step"]}
    s = SimpleNamespace(frames_per_clip=per_clip, pad_last_clip=pad, steps=steps, motion_frames=n, first_clip_motion=first)
    ref = SimpleNamespace(image=torch.full((1, *PIXELS), 0.5)[0], latent=torch.full((1, C, 1, 1), -7.0), bank="bank")
    run = bare_run(
        s=s, num_frames=frames, feature_rows=frames + 1, speeds=torch.arange(frames, dtype=torch.float32) * 10,
        pixel_drop=pixel_drop, quirks=SimpleNamespace(motion_frames_from_pixels=from_pixels), device="cpu",
        dtype=torch.float64, ref=ref, pipe=SimpleNamespace(codec=Codec()), scheduler=Scheduler(),
        model=SimpleNamespace(speed_tokens=lambda speeds: speeds.clone()), folded={"stale"},
    )
    monkeypatch.setattr(clip_loop, "first_clip_motion", lambda bank, k, mode: log["first"].append((bank, k, mode)) or "first")

    def noise(generate, index, start):
        log["noise"].append((generate, index, start))
        # float32 latents in a float64 model: the history must be cast to the model's dtype
        return torch.arange(start, start + generate, dtype=torch.float32).reshape(1, C, generate, 1, 1), f"gen{index}"

    def phases(audio, speed, motion, emotion):
        log["phases"].append((audio, speed.tolist(), motion, emotion))
        return lambda i: ([(["full"], f"cond{i}")], {"full": 1.0}, "guided")

    def with_cache(groups, caches, key):
        log["caches"].append((id(caches), key))
        assert caches == {}  # a new cache per clip
        return groups

    def with_memory(groups, i):
        log["folded"].append((i, set(run.folded)))
        return groups

    def predict(latents, t, groups, motion_latents, weights):
        log["predict"].append((t, groups, None if motion_latents is None else motion_latents.clone(), weights))
        return torch.ones_like(latents)

    def emit(kept, keep_last=0):
        log["emit"].append((kept.flatten().tolist(), keep_last))
        # decoded frames [F, 2, 2, 3] holding the latent's value: the last keep_last of them handed back
        pixels = kept[0, 0, :, 0, 0].float()[:, None, None, None].expand(-1, *PIXELS).clone()
        return pixels[-keep_last:] if keep_last else None

    run.__dict__.update(
        _cancel_point=lambda: None,
        _clip_draws=lambda index, generate: log["draws"].append((index, generate)),
        _drop_pixels=lambda frames, index: log["drop"].append((frames[:, 0, 0, 0].tolist(), index)) or frames + 0.25,
        _encode_motion=lambda latents: log["motion"].append(latents.clone()) or f"motion{len(log['motion'])}",
        _pose_window=lambda index: log["pose"].append(index.tolist()),
        _audio_tokens=lambda index: ("audio", index.tolist()),
        _clip_emotion=lambda index: ("emotion", index.tolist()),
        _noise=noise, _phases=phases, _with_cache=with_cache, _with_memory=with_memory, _predict=predict,
        _step=lambda pred, t, latents, generator: log["step"].append((t, generator)) or latents + pred,
        _report=lambda clip, clips, step, total, latents: log["report"].append(
            (clip, clips, step, total, latents.flatten().tolist())),
        _emit=emit,
    )
    return run, log


def test_clips_frames_and_motion_from_the_previous_clips_latents(monkeypatch):
    """13 frames in clips of 6, the last padded to 6 (generates 6, keeps 1); 2 motion frames, 2 steps.

    By hand: clips (index, start, keep, generate) = (0, 0, 6, 6), (1, 6, 6, 6), (2, 12, 1, 6). A clip's latents start
    at its frame numbers and gain 1 per step. Clip 0 has no previous frames: the first-clip motion ("zeros") from the
    bank. Clip 1 reads clip 0's last two latents (frames 4, 5 -> 6, 7); clip 2 clip 1's (10, 11 -> 12, 13).
    Audio frames: start .. start + generate - 1, clamped to the 14 feature rows (13 + 1 of padding); speeds: the n
    frames before too, clamped to 0 and to the 13 frames."""
    run, log = make_run(monkeypatch)
    assert run.motion_frames() == 13
    assert log["draws"] == [(0, 6), (1, 6), (2, 6)]
    assert log["noise"] == [(6, 0, 0), (6, 1, 6), (6, 2, 12)]
    assert log["first"] == [("bank", 2, "zeros")]
    assert [m[:, :, 0, 0, 0].flatten().tolist() for m in log["motion"]] == [[6.0, 7.0], [12.0, 13.0]]
    assert all(m.dtype == torch.float64 and tuple(m.shape) == (1, 2, C, 1, 1) for m in log["motion"])
    audio = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 13, 13, 13, 13]]
    speeds = [[0, 0, 0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9, 10, 11], [10, 11, 12, 12, 12, 12, 12, 12]]
    assert log["phases"] == [(("audio", a), [[10.0 * k for k in sp]], m, ("emotion", a))
                             for a, sp, m in zip(audio, speeds, ["first", "motion1", "motion2"])]
    assert log["pose"] == audio
    # every step: the clip's conditioning for step i, the motion latents (none: the first clip's motion is features)
    assert [(t, g, m is None) for t, g, m, _ in log["predict"]] == [
        (t, [(["full"], f"cond{i}")], k == 0) for k in range(3) for i, t in enumerate([900, 800])]
    # a cache dict per clip (read with the phase's key) and the folded memories reset per clip; the step's own t and
    # the clip's generator
    assert len({c for c, _ in log["caches"]}) == 3 and {k for _, k in log["caches"]} == {"guided"}
    assert log["folded"] == [(i, set()) for _ in range(3) for i in (0, 1)]
    assert log["step"] == [(t, f"gen{k}") for k in range(3) for t in (900, 800)]
    assert [r[:4] for r in log["report"]] == [(k, 3, i, 6) for k in range(3) for i in (1, 2)]
    assert log["report"][1][4] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # the latents after the step
    assert log["emit"] == [([2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 0), ([8.0, 9.0, 10.0, 11.0, 12.0, 13.0], 0), ([14.0], 0)]


def test_an_unpadded_last_clip_generates_only_its_frames(monkeypatch):
    run, log = make_run(monkeypatch, n=0, pad=False)
    run.motion_frames()
    assert log["draws"] == [(0, 6), (1, 6), (2, 1)] and log["noise"][-1] == (1, 2, 12)
    assert log["emit"][-1] == ([14.0], 0)
    assert log["first"] == [] and log["motion"] == [] and all(m is None for _, _, m, _ in log["predict"])
    assert [p[2] for p in log["phases"]] == [None, None, None]


def test_the_first_clip_reads_the_portrait_latent_repeated_when_asked(monkeypatch):
    run, log = make_run(monkeypatch, n=3, frames=8, first="reference")
    portrait = torch.arange(12.0).reshape(1, 2, 2, 3)  # [1, C, h, w] with C, h, w > 1: each axis stays in place
    run.ref.latent = portrait
    run.motion_frames()
    assert log["first"] == []
    first, second = log["motion"]
    assert tuple(first.shape) == (1, 3, 2, 2, 3)
    for k in range(3):
        assert torch.equal(first[0, k], portrait[0])
    assert second.flatten().tolist() == [5.0, 6.0, 7.0]  # clip 0's frames 3, 4, 5 after 2 steps
    assert torch.equal(log["predict"][0][2], first)  # the naive baseline gets the same latents


def test_motion_frames_from_decoded_pixels_with_a_pixel_drop(monkeypatch):
    """Pixel drop 0.5 (which also means motion frames as pixels): clip k's motion is the frames before it, with clip k's
    drop (the stand-in adds 0.25), encoded (mean + 1000) in the model's dtype. Clip 0 with "reference": the portrait
    (0.5) repeated. The decoded frames hold their latent's value: clip 0 emits 2..7 and hands back its last 2 (6, 7)."""
    run, log = make_run(monkeypatch, n=2, pixel_drop=0.5, from_pixels=True, first="reference")
    run.motion_frames()
    assert log["drop"] == [([0.5, 0.5], 0), ([6.0, 7.0], 1), ([12.0, 13.0], 2)]
    assert [m.flatten().tolist() for m in log["motion"]] == [[1000.75, 1000.75], [1006.25, 1007.25], [1012.25, 1013.25]]
    assert all(m.dtype == torch.float64 and tuple(m.shape) == (1, 2, C, 1, 1) for m in log["motion"])
    assert [keep for _, keep in log["emit"]] == [2, 2, 2]


def test_a_pixel_drop_keeps_the_last_frames_across_a_short_clip(monkeypatch):
    """3 motion frames, clips of 2 (frames 0-1, 2-3, 4): the frames before clip 2 are clip 0's last and clip 1's two."""
    run, log = make_run(monkeypatch, n=3, frames=5, per_clip=2, pad=False, pixel_drop=0.5, from_pixels=True, first="zeros")
    run.motion_frames()
    assert log["first"] == [("bank", 3, "zeros")]
    assert log["drop"] == [([2.0, 3.0], 1), ([3.0, 4.0, 5.0], 2)]


def test_motion_frames_from_decoded_pixels_without_a_drop_are_encoded_again(monkeypatch):
    """No pixel drop, motion frames from pixels: the emitted clip's last 2 decoded frames are encoded (mean + 1000)
    and become the history; the first clip uses the first-clip motion."""
    run, log = make_run(monkeypatch, n=2, from_pixels=True)
    run.motion_frames()
    assert log["first"] == [("bank", 2, "zeros")] and log["drop"] == []
    assert [m.flatten().tolist() for m in log["motion"]] == [[1006.0, 1007.0], [1012.0, 1013.0]]
    assert all(m.dtype == torch.float64 for m in log["motion"])


def test_history_longer_than_a_clip_joins_clips(monkeypatch):
    """4 motion frames, clips of 3: before clip 1 only clip 0's 3 frames exist (2, 3, 4 after 2 steps); before clip 2,
    clip 0's last one and clip 1's three (4; 5, 6, 7)."""
    run, log = make_run(monkeypatch, n=4, per_clip=3, frames=9)
    run.motion_frames()
    assert [m.flatten().tolist() for m in log["motion"]] == [[2.0, 3.0, 4.0], [4.0, 5.0, 6.0, 7.0]]
