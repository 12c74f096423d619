"""Clip and context-window planning, and the motion-frame hand-off, against values worked out by hand (no model)."""

from __future__ import annotations

import pytest
import torch

from emo_model.network.context import ReferenceBank
from emo_model.network.motion_frames import first_clip_motion, with_motion_frames
from emo_model.sampling.clip_planner import (
    Clip,
    context_schedule,
    frame_indices,
    open_uniform_windows,
    plan_clips,
    plan_windows,
    uniform_windows,
    window_weights,
)

# ---- clips --------------------------------------------------------------------------------------------


def test_clips_of_17_frames_by_8_are_8_8_1_and_the_last_is_generated_at_full_length():
    assert plan_clips(17, 8) == [Clip(0, 0, 8, 8), Clip(1, 8, 8, 8), Clip(2, 16, 1, 8)]
    assert plan_clips(17, 8, pad_last=False)[2] == Clip(2, 16, 1, 1)
    assert [c.end for c in plan_clips(17, 8)] == [8, 16, 17]
    assert plan_clips(16, 8) == [Clip(0, 0, 8, 8), Clip(1, 8, 8, 8)]  # a whole number of clips: nothing padded
    assert plan_clips(3, 1) == [Clip(0, 0, 1, 1), Clip(1, 1, 1, 1), Clip(2, 2, 1, 1)]  # the smallest clip length
    assert plan_clips(1, 8) == [Clip(0, 0, 1, 8)]  # one frame is enough


def test_clip_planning_refuses_no_frames_and_no_clip_length_in_words():
    with pytest.raises(ValueError) as exc:
        plan_clips(0, 8)
    assert str(exc.value) == "nothing to generate: the audio has no frames"
    with pytest.raises(ValueError) as exc:
        plan_clips(5, 0)
    assert str(exc.value) == "frames_per_clip must be at least 1, got 0"


def test_frame_indices_repeat_the_last_frame_for_a_short_last_clip():
    assert frame_indices(16, 4, 17).tolist() == [16, 16, 16, 16]
    assert frame_indices(6, 4, 9).tolist() == [6, 7, 8, 8]
    assert frame_indices(0, 3, 8).tolist() == [0, 1, 2]


# ---- ramp windows ---------------------------------------------------------------------------------------


def test_ramp_windows_are_stride_size_minus_overlap_and_the_last_is_aligned_to_the_end():
    assert plan_windows(10, 4, 1) == [range(0, 4), range(3, 7), range(6, 10)]  # 6 + 4 == 10: no extra window
    assert plan_windows(21, 12, 3) == [range(0, 12), range(9, 21)]
    assert plan_windows(12, 4, 1) == [range(0, 4), range(3, 7), range(6, 10), range(8, 12)]  # 9 would run past the end
    assert plan_windows(13, 12, 3) == [range(0, 12), range(1, 13)]  # stride 9 overshoots: the last one is moved back
    assert plan_windows(12, 12, 3) == [range(0, 12)]  # exactly one window
    assert plan_windows(5, 12, 3) == [range(0, 5)]  # shorter than a window: one short window


def test_window_weights_ramp_linearly_over_overlap_plus_one_frames():
    # ramp = overlap + 1; weight of frame i = min(1, (i + 1) / ramp, (length - i) / ramp)
    torch.testing.assert_close(window_weights(6, 2), torch.tensor([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]))
    torch.testing.assert_close(window_weights(4, 1), torch.tensor([0.5, 1, 1, 0.5]))
    torch.testing.assert_close(window_weights(5, 3), torch.tensor([0.25, 0.5, 0.75, 0.5, 0.25]))  # ramps meet: no 1
    torch.testing.assert_close(window_weights(3, 0), torch.ones(3))  # no overlap: equal weights
    assert window_weights(6, 2).dtype == torch.float32


# ---- AnimateAnyone-style uniform windows ----------------------------------------------------------------


def test_uniform_windows_start_every_size_minus_overlap_frames_and_wrap_to_frame_0():
    assert uniform_windows(10, 4, 1) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [9, 0, 1, 2]]
    assert uniform_windows(5, 4, 0) == [[0, 1, 2, 3], [4, 0, 1, 2]]
    assert uniform_windows(7, 4, 3) == [[(s + k) % 7 for k in range(4)] for s in range(7)]  # stride 1: a window per frame
    assert uniform_windows(4, 4, 1) == [[0, 1, 2, 3]]
    assert uniform_windows(3, 4, 1) == [[0, 1, 2]]
    assert uniform_windows(1, 4, 0) == [[0]]


def test_open_uniform_windows_stop_before_the_overlap_and_reflect_past_the_end():
    assert open_uniform_windows(10, 4, 1) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]  # 2 x 3 + 4: exact tiling
    # 11 frames: starts 0, 3, 6, 9 (< 11 - 1); frame 11 -> 11 - 2 - 0 = 9, frame 12 -> 11 - 2 - 1 = 8
    assert open_uniform_windows(11, 4, 1) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [9, 10, 9, 8]]
    assert open_uniform_windows(8, 4, 0) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert open_uniform_windows(4, 4, 1) == [[0, 1, 2, 3]]
    assert open_uniform_windows(2, 4, 1) == [[0, 1]]


@pytest.mark.parametrize("planner", [plan_windows, uniform_windows, open_uniform_windows])
def test_window_planners_refuse_no_frames_and_an_overlap_outside_0_to_size_minus_1(planner):
    assert len(planner(1, 4, 0)) == 1 and len(planner(30, 4, 3)) > 1  # the edges are accepted
    with pytest.raises(ValueError) as exc:
        planner(0, 4, 1)
    assert str(exc.value) == "nothing to generate: the audio has no frames"
    for overlap in (4, -1):
        with pytest.raises(ValueError) as exc:
            planner(30, 4, overlap)
        assert str(exc.value) == f"context overlap must be in [0, 3], got {overlap}"


# ---- the schedule of every step -------------------------------------------------------------------------


def _plain(windows):
    return [(w, b.tolist()) for w, b in windows]


def test_ramp_schedule_blends_with_edge_ramps_and_moves_by_the_shift_every_step():
    plan = context_schedule(10, 4, 1, shift_per_step=2)
    ramp = [0.5, 1.0, 1.0, 0.5]
    assert _plain(plan(0)) == [([0, 1, 2, 3], ramp), ([3, 4, 5, 6], ramp), ([6, 7, 8, 9], ramp)]
    assert _plain(plan(1)) == [([2, 3, 4, 5], ramp), ([5, 6, 7, 8], ramp), ([8, 9, 0, 1], ramp)]  # shift 2, wrapped
    assert _plain(plan(3)) == [([6, 7, 8, 9], ramp), ([9, 0, 1, 2], ramp), ([2, 3, 4, 5], ramp)]  # shift 6
    assert _plain(context_schedule(10, 4, 1)(5)) == _plain(plan(0))  # no shift: the same windows every step


def test_a_single_ramp_window_has_equal_weights_two_are_ramped():
    assert _plain(context_schedule(3, 4, 1)(0)) == [([0, 1, 2], [1.0, 1.0, 1.0])]
    assert _plain(context_schedule(7, 4, 1)(0)) == [([0, 1, 2, 3], [0.5, 1.0, 1.0, 0.5]), ([3, 4, 5, 6], [0.5, 1.0, 1.0, 0.5])]


def test_uniform_schedules_have_equal_weights():
    assert _plain(context_schedule(5, 4, 0, schedule="uniform")(0)) == [([0, 1, 2, 3], [1.0] * 4), ([4, 0, 1, 2], [1.0] * 4)]
    assert _plain(context_schedule(5, 4, 0, schedule="uniform", shift_per_step=1)(1)) == [
        ([1, 2, 3, 4], [1.0] * 4),
        ([0, 1, 2, 3], [1.0] * 4),
    ]
    assert _plain(context_schedule(8, 4, 0, schedule="uniform-open")(0)) == [
        ([0, 1, 2, 3], [1.0] * 4),
        ([4, 5, 6, 7], [1.0] * 4),
    ]
    assert [w for w, _ in context_schedule(11, 4, 1, schedule="uniform-open")(0)][-1] == [9, 10, 9, 8]  # reflected
    assert [w for w, _ in context_schedule(11, 4, 1, schedule="uniform")(0)][-1] == [9, 10, 0, 1]  # wrapped


def test_an_unknown_schedule_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError) as exc:
        context_schedule(10, 4, 1, schedule="linear")
    assert str(exc.value) == "context schedule must be ramp, uniform or uniform-open, got 'linear'"


# ---- motion frames ----------------------------------------------------------------------------------------


def _bank():
    return ReferenceBank({"a": torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])})  # [B=1, L=3, C=2]


def test_first_clip_motion_keeps_every_portrait_of_a_batch_and_one_frame_is_enough():
    tokens = torch.arange(12.0).view(2, 3, 2)  # [B=2, L=3, C=2]
    same = first_clip_motion(ReferenceBank({"a": tokens}), 1, "reference")["a"]
    zeros = first_clip_motion(ReferenceBank({"a": tokens}), 1, "zeros")["a"]
    assert same.shape == zeros.shape == (2, 1, 3, 2) and torch.equal(same[:, 0], tokens) and not zeros.any()


def test_first_clip_motion_is_zero_maps_or_the_portrait_repeated_n_times():
    tokens = _bank().tokens["a"]
    zeros = first_clip_motion(_bank(), 2, "zeros")
    assert list(zeros) == ["a"] and zeros["a"].shape == (1, 2, 3, 2) and not zeros["a"].any()
    same = first_clip_motion(_bank(), 2, "reference")
    assert same["a"].shape == (1, 2, 3, 2)
    assert torch.equal(same["a"][:, 0], tokens) and torch.equal(same["a"][:, 1], tokens)
    assert first_clip_motion(_bank(), 0, "reference") is None and first_clip_motion(_bank(), -1, "zeros") is None
    with pytest.raises(ValueError) as exc:
        first_clip_motion(_bank(), 2, "noise")
    assert str(exc.value) == "first_clip_motion must be 'zeros' or 'reference', got 'noise'"


def _cumsum_over_frames(calls):
    """A temporal module whose frame j is the sum of frames 0..j: shows what came before each frame."""

    def temporal(x, frames):
        calls.append(frames)
        bf, c, h, w = x.shape
        return x.view(bf // frames, frames, c, h, w).cumsum(1).reshape(bf, c, h, w)

    return temporal


def test_motion_frames_are_prepended_for_the_temporal_module_and_removed_after():
    # features [b*f=2, c=2, h=1, w=3]: frame 0 all ones, frame 1 all twos
    x = torch.cat([torch.ones(1, 2, 1, 3), torch.full((1, 2, 1, 3), 2.0)])
    # one motion frame [b=1, n=1, L=h*w=3, C=2]: token l has channels (l+1, 10(l+1)) -> channel 0 = [1, 2, 3], channel 1 = [10, 20, 30]
    motion = torch.tensor([[[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]]], dtype=torch.float64)
    calls = []
    out = with_motion_frames(_cumsum_over_frames(calls), x, 2, motion)
    assert calls == [3]  # the temporal module saw n + f frames
    expected = torch.tensor([
        [[[2.0, 3.0, 4.0]], [[11.0, 21.0, 31.0]]],  # motion + frame 0
        [[[4.0, 5.0, 6.0]], [[13.0, 23.0, 33.0]]],  # motion + frame 0 + frame 1
    ])
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_motion_frames_of_one_portrait_serve_every_video_of_the_batch():
    x = torch.zeros(4, 1, 1, 1)  # b=2 videos x f=2 frames, one pixel, one channel
    motion = torch.tensor([[[[5.0]], [[7.0]]]])  # [1, n=2, 1, 1]: two motion frames
    calls = []
    out = with_motion_frames(_cumsum_over_frames(calls), x, 2, motion)
    assert calls == [4] and out.flatten().tolist() == [12.0, 12.0, 12.0, 12.0]


def test_motion_frames_keep_rows_and_columns_apart():
    x = torch.zeros(2, 1, 2, 1)  # f=2 frames of 2 rows x 1 column, one channel
    motion = torch.tensor([[[[1.0], [2.0]]]])  # [1, n=1, L=2, C=1]: row 0 = 1, row 1 = 2
    out = with_motion_frames(_cumsum_over_frames([]), x, 2, motion)
    assert out.tolist() == [[[[1.0], [2.0]]], [[[1.0], [2.0]]]]


def test_without_motion_frames_the_temporal_module_sees_the_clip_alone():
    x = torch.arange(4.0).view(2, 1, 1, 2)
    for motion in (None, torch.zeros(1, 0, 2, 1)):
        calls = []
        out = with_motion_frames(_cumsum_over_frames(calls), x, 2, motion)
        assert calls == [2] and out.flatten().tolist() == [0.0, 1.0, 2.0, 4.0]


@pytest.mark.parametrize("shape", [(1, 1, 4, 2), (1, 1, 3, 3), (1, 1, 0, 2)])
def test_motion_features_of_another_size_are_refused(shape):
    x = torch.zeros(2, 2, 1, 3)
    with pytest.raises(ValueError) as exc:
        with_motion_frames(lambda t, f: t, x, 2, torch.zeros(shape))
    assert str(exc.value) == f"motion features {shape} do not match features (2, 2, 1, 3)"
