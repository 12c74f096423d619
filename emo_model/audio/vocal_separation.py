"""Vocal separation before the audio encoder, as an original runs it (``Family.vocal_separator``).

Some originals strip the music from the driving audio with the ``audio-separator`` package and an MDX-Net model
(Kim_Vocal_2.onnx from their downloads), then encode the vocals. This module runs the same steps in-process, with the
model file the user has, and onnxruntime (optional: ``pip install onnxruntime``) to run it:

1. The separator's input: ``librosa.load(file, mono=False, sr=44100)`` of the file the original hands it
   (:func:`emo_model.audio.decode.librosa_load`); mono is doubled to stereo.
2. ``MDXSeparator.separate`` (audio-separator ``architectures/mdx_separator.py`` at the pinned version): the mix is
   peak-normalised (:attr:`SeparatorSettings.normalization_threshold`; and amplified up to
   ``amplification_threshold`` where that version does), padded by ``n_fft // 2`` and cut into chunks of
   ``hop * (segment_size - 1)`` samples every ``(1 - overlap)`` chunk, each chunk through torch's STFT (Hann,
   centred; the first ``dim_f`` bins as [L re, L im, R re, R im]; the lowest 3 bins zeroed), the model, the inverse
   STFT; chunks weighted by a Hann window and divided by the summed windows, trimmed, times ``compensate``.
3. The primary stem ("Vocals") normalised again, and once more when written (``write_audio``), then quantised as
   audio-separator writes it: ``(x * 32767).astype(int16)`` (truncation), stereo at 44.1 kHz.
4. ``ffmpeg -i vocals.wav -ar 16000`` (:func:`~emo_model.audio.decode.ffmpeg_resample`) and ``librosa.load`` of that
   (int16 / 32768, channel mean): the samples wav2vec2 receives.

The model data (``n_fft``, ``dim_f``, ``dim_t``, ``compensate``, stem) is the UVR model-data entry of Kim_Vocal_2; when
the model folder holds audio-separator's ``mdx_model_data.json`` (some originals' downloads do), the entry for the file's
hash there is used instead, as audio-separator does. Checked against audio-separator itself with a stand-in model of
the same signature: tests/test_parity_audio.py, docs/parity.md ("Audio front end").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import decode as audio_decode
from .signal import AudioError


@dataclass(frozen=True)
class SeparatorSettings:
    """What an original passes to audio-separator (and that version's defaults), plus the model's UVR data."""

    model_file: str = "Kim_Vocal_2.onnx"
    # sub-folders of the model folder (or of a model file's folder) searched for ``model_file``, first found wins
    folders: tuple[str, ...] = ("audio_separator", "../audio_separator", "vocal_separator", "misc/vocal_separator",
                                "../misc/vocal_separator", "../vocal_separator")
    source: str = ""  # where the file comes from (for the "missing" line)
    version: str = ""  # audio-separator version these settings mirror (for messages and docs)
    sample_rate: int = 44100
    hop_length: int = 1024
    segment_size: int = 256
    overlap: float = 0.25
    normalization_threshold: float = 0.9
    amplification_threshold: float | None = None
    # the model's UVR model data
    n_fft: int = 7680
    dim_f: int = 3072
    dim_t: int = 256
    compensate: float = 1.009
    primary_stem: str = "Vocals"


def find_model(settings: SeparatorSettings, model_path: str | Path | None) -> Path | None:
    """The separator model file in one of ``settings.folders`` beside the model, or None."""
    if model_path is None:
        return None
    base = Path(model_path)
    base = base if base.is_dir() else base.parent
    for rel in settings.folders:
        candidate = base / rel / settings.model_file
        if candidate.is_file():
            return candidate.resolve()
    return None


def missing_reason(settings: SeparatorSettings, model_path: str | Path | None) -> str:
    """'' when separation can run, else one line: what is missing; what to do (the part before ';' is the short form
    a node's summary shows)."""
    found = find_model(settings, model_path)
    if found is None:
        return (f"vocal separation off: no {settings.model_file} in {settings.folders[0]}/ beside the model; the whole mix "
                f"drives the mouth. {settings.source}")
    if not runtime_available():
        return "vocal separation off: onnxruntime is not installed; the whole mix drives the mouth. pip install onnxruntime"
    return ""


def runtime_available() -> bool:
    """Whether onnxruntime (optional: ``pip install onnxruntime``) can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def model_data(settings: SeparatorSettings, path: Path) -> SeparatorSettings:
    """``settings`` with the model data audio-separator would use for ``path``: the entry for the file's hash in
    ``mdx_model_data.json`` beside it when there is one (its hash: MD5 of the last 10 MB, or of the whole file)."""
    table = path.parent / "mdx_model_data.json"
    if not table.is_file():
        return settings
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - 10000 * 1024) if size > 10000 * 1024 else 0)
        digest = hashlib.md5(fh.read()).hexdigest()
    try:
        entry = json.loads(table.read_text(encoding="utf-8")).get(digest)
    except (OSError, ValueError):
        entry = None
    if not entry or "mdx_dim_f_set" not in entry:
        return settings
    return dataclasses.replace(settings, n_fft=int(entry["mdx_n_fft_scale_set"]), dim_f=int(entry["mdx_dim_f_set"]),
                               dim_t=2 ** int(entry["mdx_dim_t_set"]), compensate=float(entry["compensate"]),
                               primary_stem=str(entry.get("primary_stem", settings.primary_stem)))


def onnx_model(path: Path, settings: SeparatorSettings) -> Callable[[np.ndarray], np.ndarray]:
    """The model as a function [batch, 4, dim_f, dim_t] -> the same (onnxruntime, CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    want = (4, settings.dim_f, settings.dim_t)
    if len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape[1:], want)):
        raise AudioError(f"{path.name} takes input {shape}, not [batch, 4, {settings.dim_f}, {settings.dim_t}]: it is not the "
                         f"separator model this family's original uses ({settings.model_file}); put that file there instead")
    name = session.get_inputs()[0].name
    return lambda spec: session.run(None, {name: spec})[0]


# --------------------------------------------------------------------------------------------------
# audio-separator's MDX path


def _normalize(wave: np.ndarray, max_peak: float, min_peak: float | None) -> np.ndarray:
    """spec_utils.normalize (in place, as there)."""
    peak = np.abs(wave).max()
    if peak > max_peak:
        wave *= max_peak / peak
    elif min_peak is not None and 0 < peak < min_peak:
        wave *= min_peak / peak
    return wave


class MDXSeparator:
    """audio-separator's MDX separation with a model function (``run(spec) -> spec``, numpy float32)."""

    def __init__(self, settings: SeparatorSettings, run: Callable[[np.ndarray], np.ndarray]):
        self.s = settings
        self.run = run
        self.window = torch.hann_window(settings.n_fft, periodic=True)

    def _stft(self, chunk: torch.Tensor) -> torch.Tensor:
        """[1, 2, T] -> [1, 4, dim_f, frames] (L re, L im, R re, R im)."""
        spec = torch.stft(chunk.reshape(-1, chunk.shape[-1]), n_fft=self.s.n_fft, hop_length=self.s.hop_length,
                          window=self.window, center=True, return_complex=True)
        spec = torch.view_as_real(spec).permute(0, 3, 1, 2)  # [2, 2 (re, im), bins, frames]
        return spec.reshape(1, 4, spec.shape[-2], spec.shape[-1])[:, :, : self.s.dim_f]

    def _istft(self, spec: torch.Tensor) -> torch.Tensor:
        bins = self.s.n_fft // 2 + 1
        pad = torch.zeros(spec.shape[0], 4, bins - spec.shape[2], spec.shape[3])
        spec = torch.cat([spec, pad], dim=2).reshape(-1, 2, bins, spec.shape[3]).permute(0, 2, 3, 1)
        wave = torch.istft(spec[..., 0] + spec[..., 1] * 1.0j, n_fft=self.s.n_fft, hop_length=self.s.hop_length,
                           window=self.window, center=True)
        return wave.reshape(-1, 2, wave.shape[-1])

    def _run_chunk(self, part: np.ndarray) -> np.ndarray:
        spec = self._stft(torch.from_numpy(np.ascontiguousarray(part[None], dtype=np.float32)))
        spec[:, :, :3, :] *= 0
        pred = self.run(spec.numpy())
        return self._istft(torch.as_tensor(np.asarray(pred, dtype=np.float32))).numpy()

    def demix(self, mix: np.ndarray) -> np.ndarray:
        """``MDXSeparator.demix(mix)``: [2, T] float32 -> the primary source [2, T] (before normalisation)."""
        s = self.s
        trim = s.n_fft // 2
        chunk = s.hop_length * (s.segment_size - 1)
        gen = chunk - 2 * trim
        pad = gen + trim - mix.shape[-1] % gen
        mixture = np.concatenate((np.zeros((2, trim), "float32"), mix, np.zeros((2, pad), "float32")), 1)
        step = int((1 - s.overlap) * chunk)
        result = np.zeros((1, 2, mixture.shape[-1]), np.float32)
        divider = np.zeros((1, 2, mixture.shape[-1]), np.float32)
        for start in range(0, mixture.shape[-1], step):
            end = min(start + chunk, mixture.shape[-1])
            actual = end - start
            window = np.tile(np.hanning(actual)[None, None, :], (1, 2, 1)) if s.overlap != 0 else None
            part = mixture[:, start:end]
            if end != start + chunk:
                part = np.concatenate((part, np.zeros((2, start + chunk - end), "float32")), axis=-1)
            waves = self._run_chunk(part)
            if window is not None:
                waves[..., :actual] *= window
                divider[..., start:end] += window
            else:
                divider[..., start:end] += 1
            result[..., start:end] += waves[..., : end - start]
        with np.errstate(invalid="ignore", divide="ignore"):  # the padding's first / last sample: 0 / 0, cut below
            waves = result / divider
        source = waves[:, :, trim:-trim][0][:, : mix.shape[-1]]
        source *= s.compensate
        return source

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """The stem file audio-separator writes for ``output_single_stem="vocals"``: int16 [2, T] at 44.1 kHz."""
        s = self.s
        if mix.ndim == 1 or mix.shape[0] == 1:
            mix = np.asfortranarray(np.stack([mix.reshape(-1), mix.reshape(-1)]))
        if not np.any(mix):
            raise AudioError("the audio is silent, so there are no vocals to separate; use a clip with sound in it")
        mix = _normalize(np.array(mix, dtype=np.float32), s.normalization_threshold, s.amplification_threshold)
        source = self.demix(mix)
        primary = _normalize(source, s.normalization_threshold, s.amplification_threshold).T
        stem = _normalize(primary, s.normalization_threshold, s.amplification_threshold)  # write_audio's
        if np.max(np.abs(stem)) < 1e-6:
            raise AudioError("the vocal separator found no vocals in this audio (its output is silent); "
                             "use a clip with a voice, or a model without vocal separation")
        return np.ascontiguousarray((stem * 32767).astype(np.int16).T)


def separate(audio: audio_decode.Decoded, loader: str, separator: MDXSeparator) -> tuple[np.ndarray, np.ndarray]:
    """(vocals, stem): the mono 16 kHz float32 vocals wav2vec2 receives, and the int16 stereo 44.1 kHz stem."""
    first = audio_decode.first_stage(audio, loader)
    mix = audio_decode.librosa_load(first, separator.s.sample_rate, mono=False)
    stem = separator.separate(mix)
    at16k = audio_decode.ffmpeg_resample(audio_decode.Decoded(stem, separator.s.sample_rate, "stereo"), audio_decode.SAMPLE_RATE)
    return audio_decode.librosa_load(at16k), stem


def load_separator(settings: SeparatorSettings, model_path: str | Path | None) -> MDXSeparator:
    """The separator for the file beside the model (check :func:`missing_reason` first)."""
    path = find_model(settings, model_path)
    if path is None:
        raise AudioError(missing_reason(settings, model_path))
    settings = model_data(settings, path)
    return MDXSeparator(settings, onnx_model(path, settings))

