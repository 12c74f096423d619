"""Audio features computed per clip, on demand: :class:`StreamedFeatures`.

The pipeline reads the audio features of one clip (or context window) at a time, ``features[index]``
(:meth:`emo_model.sampling.pipeline.EMOPipeline.generate`). A :class:`StreamedFeatures` answers that by running the
audio encoder on the piece of audio those frames (and their margin neighbours) lie in, keeping only the
last ``keep`` pieces; the whole feature tensor never exists. The values are bit-identical to the
encoder's one-go ``encode`` (same pieces, same arithmetic; tests/test_audio_stream.py checks it):

* ``wav2vec2``: the 20 s pieces (+ 2.5 s of context each side) that ``Wav2Vec2AudioEncoder.encode``
  already cuts the audio into; the waveform is normalised over the whole audio first, as there.
* ``whisper``: the 30 s windows of ``WhisperAudioEncoder``; the log-mel of the whole clip is made first (its
  floor is relative to the whole clip's peak; 1.9 MB per minute, its spectrum computed 30 s at a time).
* ``logmel``: the per-frame energies are computed first, 20 s of spectrum at a time (128 bytes per frame at
  32 mel bands); only the margin windows are assembled per clip.

What stays whole, so that it grows with the audio: the prepared 16 kHz waveform (3.8 MB per minute, plus
its normalised copy for wav2vec2), whisper's log-mel, the log-mel table. Families whose encoder must see
the whole audio (``InferenceQuirks.audio_single_pass``; ``segment_seconds``) are encoded in one
go by :func:`~emo_model.audio.encoders.encode_audio`, as before: :func:`stream_audio` falls back to it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch

from ..configs import AudioFeatureConfig
from .encoder_base import AudioEncoder, AudioFeatures
from .encoders import LogMelAudioEncoder, encode_audio
from .signal import AudioError, PreparedAudio, frame_samples, prepare_audio, window_frames
from .wav2vec2 import Wav2Vec2AudioEncoder
from .whisper import WhisperAudioEncoder

KEEP_PIECES = 2  # computed pieces kept: a clip and its margin never straddle more than two


class StreamedFeatures:
    """Per-frame audio features, computed piece by piece when indexed (a stand-in for the features tensor).

    ``features[index]`` (an int, a slice, a list or a 1-D integer tensor of frames) returns exactly the rows
    the whole tensor would hold, as a float32 CPU tensor. Internally a frame's row gathers *base rows*
    (wav2vec2 / log-mel: per-frame vectors, whisper: 50 Hz encoder steps), and base rows are computed per
    piece: ``spans[p]`` is piece ``p``'s ``[start, end)`` range of base rows, ``compute(p)`` its rows,
    ``gather(frames)`` the ``[len(frames), k]`` base rows of those frames; the result is reshaped to
    ``[len(frames), *row_shape]``. At most ``keep`` computed pieces are held.
    """

    def __init__(
        self,
        rows: int,
        row_shape: Sequence[int],
        spans: Sequence[tuple[int, int]],
        compute: Callable[[int], torch.Tensor],
        gather: Callable[[torch.Tensor], torch.Tensor],
        *,
        assemble: Callable[[torch.Tensor], torch.Tensor] | None = None,
        keep: int = KEEP_PIECES,
    ):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 piece, got {keep}")
        self.shape = torch.Size((rows, *row_shape))
        self.spans = list(spans)
        self._starts = torch.tensor([start for start, _ in self.spans])
        self._compute, self._gather, self._assemble, self.keep = compute, gather, assemble, keep
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.computed = 0  # pieces computed so far (a piece dropped and needed again counts again)

    dtype = torch.float32
    device = torch.device("cpu")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StreamedFeatures(shape={tuple(self.shape)}, pieces={len(self.spans)}, held={list(self._cache)})"

    def __getitem__(self, index):
        rest = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        rows = len(self)
        frames = torch.arange(*index.indices(rows)) if isinstance(index, slice) else torch.as_tensor(index)
        single = frames.ndim == 0
        if frames.ndim > 1 or frames.is_floating_point() or frames.is_complex() or frames.dtype == torch.bool:
            raise IndexError(f"StreamedFeatures takes an int, a slice or a 1-D integer index of frames, got {index!r}")
        frames = frames.reshape(-1).long().cpu()
        frames = torch.where(frames < 0, frames + rows, frames)
        if frames.numel() and (int(frames.min()) < 0 or int(frames.max()) >= rows):
            raise IndexError(f"frame index out of range for {rows} frames")
        out = self._rows(frames)
        if single:
            out = out[0]
            return out[rest] if rest else out
        return out[(slice(None), *rest)] if rest else out

    def materialize(self) -> torch.Tensor:
        """The whole feature tensor, as the one-go encoder makes it (the same values and, with ``assemble``, the
        same layout, e.g. a strided view of margin windows): for callers that need every row at once."""
        if self._assemble is None:
            return self[:]
        return self._assemble(torch.cat([self._piece(p) for p in range(len(self.spans))]))

    def _rows(self, frames: torch.Tensor) -> torch.Tensor:
        base = self._gather(frames).reshape(-1)
        piece = torch.bucketize(base, self._starts, right=True) - 1
        out = None
        for p in piece.unique().tolist():  # ascending: each needed piece computed at most once per call
            chosen = (piece == p).nonzero().squeeze(1)
            block = self._piece(p)
            if out is None:
                out = block.new_empty((base.numel(), *block.shape[1:]))
            out[chosen] = block[base[chosen] - self.spans[p][0]]
        if out is None:  # no frames asked
            return torch.empty((0, *self.shape[1:]), dtype=self.dtype)
        return out.reshape(frames.numel(), *self.shape[1:])

    def _piece(self, p: int) -> torch.Tensor:
        if p in self._cache:
            self._cache.move_to_end(p)
            return self._cache[p]
        with torch.no_grad():
            block = self._compute(p)
        start, end = self.spans[p]
        if block.shape[0] != end - start:
            raise RuntimeError(f"audio piece {p} gave {block.shape[0]} rows for frames {start}..{end}")
        self.computed += 1
        self._cache[p] = block
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return block


def _margin_gather(margin: int, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Frame ``f`` reads frames ``f - margin .. f + margin``, clamped (as :func:`~emo_model.audio.signal.window_frames`)."""
    offsets = torch.arange(-margin, margin + 1)
    return lambda frames: (frames.unsqueeze(1) + offsets).clamp(0, rows - 1)


def stream_features(
    encoder: AudioEncoder, audio: PreparedAudio, *, whole_clips_of: int | None = None, keep: int = KEEP_PIECES
) -> StreamedFeatures:
    """``encoder.encode(audio, ...)`` as :class:`StreamedFeatures` (wav2vec2, whisper or log-mel)."""
    cfg = encoder.cfg
    window = 2 * cfg.margin + 1
    if whole_clips_of and not isinstance(encoder, Wav2Vec2AudioEncoder):
        raise AudioError(f"whole_clips_of applies to wav2vec2 features only, not {encoder.kind} features")
    if isinstance(encoder, LogMelAudioEncoder):
        table = encoder.per_frame(audio)  # [F, 1, n_mels]: 128 B per frame at 32 bands
        rows = table.shape[0]
        return StreamedFeatures(
            rows, (window, *table.shape[1:]), [(0, rows)], lambda p: table, _margin_gather(cfg.margin, rows),
            assemble=partial(window_frames, margin=cfg.margin), keep=keep,
        )  # fmt: skip
    if isinstance(encoder, Wav2Vec2AudioEncoder):
        return _stream_wav2vec2(encoder, audio, whole_clips_of, keep)
    if isinstance(encoder, WhisperAudioEncoder):
        return _stream_whisper(encoder, audio, keep)
    raise AudioError(f"no streamed features for {encoder.kind} encoders")


def _stream_wav2vec2(
    encoder: Wav2Vec2AudioEncoder, audio: PreparedAudio, whole_clips_of: int | None, keep: int
) -> StreamedFeatures:
    encoder._check(audio)
    waveform, rows = encoder.prepared_waveform(audio, whole_clips_of)  # as Wav2Vec2AudioEncoder.encode reads it
    plan = list(encoder.chunks(rows, audio.fps))
    fps = audio.fps

    def compute(p: int) -> torch.Tensor:
        keep_start, keep_end, span_start, span_end = plan[p]
        samples = waveform[frame_samples(span_start, fps) : frame_samples(span_end, fps)]
        hidden = encoder._encode_span(samples, span_end - span_start)
        return hidden[keep_start - span_start : keep_end - span_start].clone()  # the context rows dropped

    spans = [(keep_start, keep_end) for keep_start, keep_end, _, _ in plan]
    row_shape = (2 * encoder.cfg.margin + 1, encoder.cfg.layers, encoder.cfg.dim)
    return StreamedFeatures(
        rows, row_shape, spans, compute, _margin_gather(encoder.cfg.margin, rows),
        assemble=partial(window_frames, margin=encoder.cfg.margin), keep=keep,
    )  # fmt: skip


def _stream_whisper(encoder: WhisperAudioEncoder, audio: PreparedAudio, keep: int) -> StreamedFeatures:
    encoder._check(audio)
    mel = encoder.log_mel(audio)
    windows = encoder.windows(mel)
    spans, start = [], 0
    for _, kept in windows:
        spans.append((start, start + kept))
        start += kept
    steps, fps = start, audio.fps
    window = encoder.cfg.whisper_window[1] - encoder.cfg.whisper_window[0] + 1
    return StreamedFeatures(
        audio.num_frames,
        (window * encoder.cfg.layers, encoder.cfg.dim),
        spans,
        lambda p: encoder.encode_window(mel, *windows[p]),
        lambda frames: encoder.step_index(frames, fps, steps),
        assemble=lambda per_step: per_step[encoder.step_index(torch.arange(audio.num_frames), fps, steps)].reshape(
            audio.num_frames, -1, per_step.shape[-1]
        ),
        keep=keep,
    )


def stream_audio(
    source: str | os.PathLike | Mapping,
    cfg: AudioFeatureConfig,
    encoder: AudioEncoder | None,
    fps: float,
    *,
    loudness_lufs: float | None = None,
    num_frames: int | None = None,
    keep: int = KEEP_PIECES,
    **options,
) -> AudioFeatures:
    """:func:`~emo_model.audio.encoders.encode_audio` with :class:`StreamedFeatures` where the encoder allows it.

    ``options`` are encode_audio's front-end options. With ``whole_clips_of`` alone (or none) the features
    are streamed; any other (``single_pass``, ``segment_seconds``: the encoder must see the whole audio at
    once) makes this the one-go :func:`encode_audio`, whose features are a tensor.
    """
    if any(value for key, value in options.items() if key != "whole_clips_of"):
        return encode_audio(source, cfg, encoder, fps, loudness_lufs=loudness_lufs, num_frames=num_frames, **options)
    if encoder is None:
        if cfg.kind != "logmel":
            raise AudioError(f"{cfg.kind} features need a loaded audio encoder; only logmel works without one.")
        encoder = LogMelAudioEncoder(cfg)
    elif encoder.kind != cfg.kind:
        raise AudioError(f"the audio encoder gives {encoder.kind} features but the model expects {cfg.kind}.")
    elif encoder.cfg != cfg:
        raise AudioError(f"the audio encoder was built for {encoder.cfg}, but the model expects {cfg}.")
    audio = prepare_audio(source, fps, loudness_lufs=loudness_lufs, num_frames=num_frames)
    features = stream_features(encoder, audio, whole_clips_of=options.get("whole_clips_of"), keep=keep)
    return AudioFeatures(features=features, fps=audio.fps, num_frames=audio.num_frames, audio=audio, kind=encoder.kind)
