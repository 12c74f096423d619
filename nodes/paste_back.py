"""EMO Paste Back: the animated square crop -> full-size frames of the source picture (emo_model.face.paste_back)."""

from __future__ import annotations

import logging

import torch

from ..emo_model.face.paste_back import (
    COLOUR_MODES,
    DEFAULT_FEATHER,
    DEFAULT_GROW,
    MAX_SIDE,
    PasteBack,
    frame_megabytes,
    track_placements,
)
from . import _comfy

log = logging.getLogger("ComfyUI-EMO")

MB_1080P = frame_megabytes(1920, 1080)  # 24.9 MB: one 1920x1080 float32 IMAGE frame


class EMOPasteBack:
    DESCRIPTION = (
        "Puts the animated face back into the picture it came from: the frames (the square crop the sampler made, or the "
        "same frames after an upscaler or face restorer) are mapped back through EMO Face Mask's crop and blended in with a "
        "soft mask (the face grown for head motion, feathered, colours matched at the seam); every pixel outside the "
        f"blended region is the source picture's, unchanged, in every frame. Output: frames at the picture's size (sides made "
        f"even for H.264, at most {MAX_SIDE} px). Memory: a full-size IMAGE batch costs width x height x 3 x 4 bytes a frame "
        f"({MB_1080P:.1f} MB per 1080p frame, {MB_1080P * 25 * 60 / 1000:.1f} GB per minute at 25 fps); frames are composited "
        "batch_size at a time, so only the output grows with length. To keep long videos bounded, wire VideoHelperSuite's "
        "Meta Batch Manager into meta_batch here and into VHS Video Combine: each run returns the next frames_per_batch "
        "full-size frames and the workflow is queued again until the last one is written to the same file (or use the "
        "command line: emo generate --frame full streams frames to the file)."
    )
    CATEGORY = "EMO"
    FUNCTION = "paste"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = (
        (f"Full-size frames at the source picture's size (even sides): {MB_1080P:.1f} MB per 1080p frame as an IMAGE batch; "
         "connect to Video Combine."),
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "The animated square frames (EMO Sampler's output, or after an upscaler / face restorer: any square size)."}),
                "source": ("IMAGE", {"tooltip": "The picture EMO Face Mask cropped. A batch (a scene video of that size) is a moving background: frame i goes into picture i (the last one held). Run EMO Face Mask on the whole scene batch (union off) and the face is tracked: frame i is pasted at picture i's own box, smoothed over 5 frames (feed the sampler's reference from the first crop); with union on, or one picture cropped, one box serves every frame."}),
                "crop": ("EMO_CROP", {"tooltip": "EMO Face Mask's crop output: where the square sits in the picture (box, scale, face)."}),
                "grow": ("FLOAT", {"default": DEFAULT_GROW, "min": 1.0, "max": 4.0, "step": 0.05, "tooltip": "The pasted region is the face box grown this much about its centre: room for head motion (kept inside the crop)."}),
                "feather": ("FLOAT", {"default": DEFAULT_FEATHER, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Width of the soft edge as a fraction of the face size (0 = a hard edge)."}),
                "colour_match": (list(COLOUR_MODES), {"default": "local", "tooltip": "local: the frames' colours meet the picture's where they touch it, place by place (measured on the first frame); mean: one colour shift so the seam's average matches; none: paste as generated."}),
                "batch_size": ("INT", {"default": 16, "min": 1, "max": 1024, "tooltip": "Frames composited at a time: bounds the working memory besides the output itself."}),
            },
            "optional": {
                "meta_batch": ("VHS_BatchManager", {"tooltip": "Optional: VideoHelperSuite's Meta Batch Manager (also wired into VHS Video Combine's meta_batch). Each run then returns only the next frames_per_batch full-size frames, and VideoHelperSuite queues the workflow again until the last one is in the file: memory stays at one batch however long the video. The sampler's output is reused from ComfyUI's cache between runs (keep the seed fixed)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def paste(self, frames, source, crop, grow, feather, colour_match, batch_size, meta_batch=None, unique_id=None):
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[0] == 0:
            raise ValueError("frames must be an IMAGE batch [frames, height, width, 3] from EMO Sampler (or an upscaler after it)")
        if not isinstance(source, torch.Tensor) or source.dim() not in (3, 4) or 0 in source.shape:
            raise ValueError("source must be the IMAGE given to EMO Face Mask")
        placements = crop if isinstance(crop, (list, tuple)) else [crop]
        if not placements or not hasattr(placements[0], "crop_box"):
            raise ValueError("crop must be EMO Face Mask's crop output (EMO_CROP)")
        if source.dim() == 3:
            source = source[None]
        n = frames.shape[0]
        if len(placements) > 1 and len(placements) != source.shape[0]:
            raise ValueError(f"crop holds {len(placements)} boxes but source has {source.shape[0]} pictures: give EMO Paste Back "
                             "the same picture batch EMO Face Mask cropped (or one picture)")
        if any(p.fell_back for p in placements):
            some = "on some pictures (their boxes follow the nearest frame with a face)" if len(placements) > 1 and not all(
                p.fell_back for p in placements) else "on the picture; the animation is pasted at EMO Face Mask's fallback box"
            log.warning("EMO Paste Back: no face was found %s", some)
        pasters = _Pasters(source, placements, dict(grow=grow, feather=feather, colour=colour_match))
        if meta_batch is None:
            return (_composite(pasters, frames, 0, n, batch_size),)
        return (_meta_batch_step(meta_batch, str(unique_id), pasters, frames, batch_size),)


class _Pasters:
    """Which PasteBack, and which background, each frame uses. One placement: one PasteBack on the first picture,
    frame i pasted into picture i of a scene video (the last held). One placement per picture (EMO Face Mask run on
    the scene video): the face is tracked, frame i pasted at its own smoothed box into picture i."""

    def __init__(self, source: torch.Tensor, placements: list, options: dict) -> None:
        self.source, self.options = source, options
        # one box for all (one picture, or EMO Face Mask's union): no tracking; the colour match measured on frame 0
        self.tracked = len({(tuple(p.crop_box), p.face_box.as_tuple()) for p in placements}) > 1
        self.placements = track_placements(list(placements)) if self.tracked else list(placements)
        self._cache: tuple[int, PasteBack] | None = None
        first = self.paster(0)
        self.out_height, self.out_width = first.out_height, first.out_width

    def _picture(self, i: int):
        return self.source[min(i, self.source.shape[0] - 1)].cpu().float().numpy()

    def paster(self, i: int) -> PasteBack:
        key = min(i, len(self.placements) - 1) if self.tracked else 0
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, PasteBack(self._picture(key), self.placements[key], **self.options))
        return self._cache[1]

    def frames(self, start: int, batch: torch.Tensor):
        """Full-size frames for ``batch`` (frames start, start + 1, ...)."""
        arr = batch.clamp(0.0, 1.0).numpy()
        if self.tracked:
            for i in range(len(arr)):  # past the last picture: its box and picture held
                yield from self.paster(start + i).iter_composite(arr[i:i + 1])
        elif self.source.shape[0] > 1:  # a scene video: picture i behind frame i, the last one held
            backgrounds = [self._picture(i) for i in range(start, start + len(arr))]
            yield from self.paster(0).iter_composite(arr, backgrounds=backgrounds)
        else:
            yield from self.paster(0).iter_composite(arr)


def _composite(pasters: _Pasters, frames: torch.Tensor, first: int, stop: int, batch_size: int) -> torch.Tensor:
    """Frames ``first..stop-1`` at the picture's size."""
    out = torch.empty((stop - first, pasters.out_height, pasters.out_width, 3), dtype=torch.float32)
    progress = _comfy.Progress(stop - first)
    for start in range(first, stop, batch_size):
        if _comfy.interrupted():
            _comfy.raise_interrupt()
        batch = frames[start:min(stop, start + batch_size)].to("cpu")
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        for i, frame in enumerate(pasters.frames(start, batch)):
            out[start - first + i] = torch.from_numpy(frame)
        progress.set(min(stop, start + batch_size) - first)
    return out


def _ranges(n: int, step: int):
    """(start, stop) of each meta batch; stops early when VideoHelperSuite closes it (``send`` of a value)."""
    for start in range(0, n, step):
        if (yield start, min(n, start + step)) is not None:
            return


def _meta_batch_step(manager, key: str, pasters: _Pasters, frames: torch.Tensor, batch_size: int) -> torch.Tensor:
    """One run under VideoHelperSuite's Meta Batch Manager, the way its video loaders take part (duck-typed: the
    manager's ``frames_per_batch``, ``inputs``, ``total_frames`` and ``has_closed_inputs``): the first run registers
    this node's batches (its pasters too, so the colour match is measured once, on frame 0, as without batches), each
    run returns the next one, and the last closes this input so VHS Video Combine finishes the file and stops requeueing."""
    per_batch = getattr(manager, "frames_per_batch", None)
    inputs = getattr(manager, "inputs", None)
    if not isinstance(per_batch, int) or per_batch < 1 or not isinstance(inputs, dict):
        raise ValueError("meta_batch must be VideoHelperSuite's Meta Batch Manager output (VHS_BatchManager), or left unconnected")
    n = frames.shape[0]
    state = inputs.get(key)
    if state is None or state[0] != n:
        state = (n, pasters, _ranges(n, per_batch))
        inputs[key] = state
        manager.total_frames = min(getattr(manager, "total_frames", n), n)
    _, kept, ranges = state
    try:
        first, stop = next(ranges)
    except StopIteration:  # closed by VideoHelperSuite (reset): start over
        inputs.pop(key, None)
        return _meta_batch_step(manager, key, pasters, frames, batch_size)
    out = _composite(kept, frames, first, stop, batch_size)
    if stop >= n:
        inputs.pop(key, None)
        manager.has_closed_inputs = True
    log.info("EMO Paste Back: meta batch frames %d-%d of %d", first, stop - 1, n)
    return out


def crop_output(crops) -> list:
    """EMO Face Mask's EMO_CROP value: one placement per image (crop box, scale, face box, mask)."""
    from ..emo_model.face.paste_back import CropPlacement

    return [CropPlacement.from_crop(c) for c in crops]
