"""Audio features streamed per clip (emo_model.audio.stream): bit-identical to the one-go features, computed
lazily piece by piece with a bounded number of pieces held; single-pass encoders keep the one-go path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_audio import LOGMEL, TINY_DIMS, W2V, WHISPER, comfy, openai_whisper_state_dict, reference_ctc, tone  # noqa: F401

from emo_model.audio.encoders import LogMelAudioEncoder, build_audio_encoder, encode_audio
from emo_model.audio.signal import prepare_audio
from emo_model.audio.stream import StreamedFeatures, stream_audio, stream_features
from emo_model.audio.wav2vec2 import Wav2Vec2AudioEncoder


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A tone with a random loudness envelope: neighbouring pieces differ."""
    wave = tone(seconds, 16000)
    envelope = np.repeat(np.random.default_rng(seed).uniform(0.05, 1.0, size=int(seconds * 10) + 1), 1600)[: len(wave)]
    return (wave * envelope[:, None]).astype(np.float32)


@pytest.fixture(scope="module")
def wav2vec2(reference_ctc):  # noqa: F811
    # 1 s pieces with 0.4 s of context: a few seconds of audio make several pieces
    return Wav2Vec2AudioEncoder(reference_ctc.wav2vec2, W2V, chunk_seconds=1.0, context_seconds=0.4)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    path = tmp_path_factory.mktemp("whisper") / "whisper_tiny.pt"
    torch.save({"dims": TINY_DIMS, "model_state_dict": openai_whisper_state_dict()}, path)
    return build_audio_encoder(WHISPER, path)


def assert_reads_match(streamed: StreamedFeatures, whole: torch.Tensor, frames_per_clip: int) -> None:
    """Every way the pipeline (and a caller) reads rows gives exactly the whole tensor's rows."""
    n = whole.shape[0]
    assert streamed.shape == whole.shape and len(streamed) == n and streamed.dtype == whole.dtype
    for start in range(0, n, frames_per_clip):  # clip by clip, the last clip padded (motion-frames strategy)
        index = torch.arange(start, start + frames_per_clip).clamp(max=n - 1)
        assert torch.equal(streamed[index], whole[index])
    wrapped = torch.tensor([n - 3, n - 2, n - 1, 0, 1, 2])  # a context window that wraps around the end
    assert torch.equal(streamed[wrapped], whole[wrapped])
    assert torch.equal(streamed[n // 2], whole[n // 2]) and torch.equal(streamed[-1], whole[-1])
    assert torch.equal(streamed[3:7], whole[3:7]) and torch.equal(streamed[:, 2], whole[:, 2])
    assert torch.equal(streamed.materialize(), whole) and torch.equal(streamed[:], whole)


def test_logmel_streamed_equals_whole():
    audio = prepare_audio(comfy(speechlike(3.3), 16000), 25)
    encoder = LogMelAudioEncoder(LOGMEL)
    assert_reads_match(stream_features(encoder, audio), encoder.encode(audio), 8)


@pytest.mark.parametrize("piece", [7, 64, 331, 2000])
def test_logmel_spectrogram_in_pieces_equals_the_whole_spectrogram(piece):
    encoder = LogMelAudioEncoder(LOGMEL)
    encoder.PIECE = piece  # 3.3 s: 331 STFT frames, so 7 and 64 make pieces (the last one overlapping)
    wave = prepare_audio(comfy(speechlike(3.3, seed=1), 16000), 25).waveform
    whole = torch.stft(wave, 400, 160, window=torch.hann_window(400), return_complex=True).abs().square().T @ encoder.filters
    assert torch.equal(encoder.mel_power(wave), whole)


@pytest.mark.parametrize("whole_clips_of", [None, 10])
def test_wav2vec2_streamed_equals_whole_and_is_lazy(wav2vec2, whole_clips_of):
    audio = prepare_audio(comfy(speechlike(4.3), 16000), 25)
    whole = wav2vec2.encode(audio, whole_clips_of=whole_clips_of)
    lengths: list[int] = []
    hook = wav2vec2.model.feature_extractor.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[-1]))
    try:
        streamed = stream_features(wav2vec2, audio, whole_clips_of=whole_clips_of)
        assert streamed.computed == 0 and lengths == []  # nothing encoded until a clip asks
        assert len(streamed.spans) == 5
        index = torch.arange(0, 12)
        assert torch.equal(streamed[index], whole[index])
        assert streamed.computed == 1 and len(lengths) == 1 and max(lengths) <= round(1.4 * 16000) + 1
        for start in range(0, whole.shape[0], 12):  # the pipeline's order: each piece is encoded once
            clip = torch.arange(start, min(start + 12, whole.shape[0]))
            assert torch.equal(streamed[clip], whole[clip])
            assert len(streamed._cache) <= streamed.keep
        assert streamed.computed == len(streamed.spans) and max(lengths) <= round(1.8 * 16000) + 1
        assert_reads_match(streamed, whole, 12)
    finally:
        hook.remove()


def test_whisper_streamed_equals_whole_and_is_lazy(whisper):
    audio = prepare_audio(comfy(speechlike(61.0), 16000), 24)  # three 30 s windows, the last one 1 s
    whole = whisper.encode(audio)
    windows: list[int] = []
    hook = whisper.model.conv1.register_forward_pre_hook(lambda _m, args: windows.append(args[0].shape[-1]))
    try:
        streamed = stream_features(whisper, audio)
        assert streamed.computed == 0 and windows == [] and len(streamed.spans) == 3
        first = torch.arange(0, 16)
        assert torch.equal(streamed[first], whole[first]) and windows == [3000]
        assert_reads_match(streamed, whole, 16)
        assert len(streamed._cache) <= streamed.keep
    finally:
        hook.remove()


@pytest.mark.parametrize("piece", [7, 1000, None])
def test_whisper_log_mel_in_pieces_equals_the_feature_extractor(whisper, piece):
    audio = prepare_audio(comfy(speechlike(61.3, seed=2), 16000), 24)
    source = audio.waveform[: audio.real_samples].numpy()  # the file's samples, not the padding to whole frames
    extractor = whisper.feature_extractor(
        source, sampling_rate=16000, padding="longest", truncation=False, return_tensors="pt"
    ).input_features[0]
    default = whisper.mel_piece
    whisper.mel_piece = piece or default  # None: the 30 s pieces (3 here, the last one overlapping)
    try:
        # A tolerance, not torch.equal: the reference is whatever WhisperFeatureExtractor the venv's transformers ships,
        # and how it computes the same spectrum (numpy or torch STFT, float64 or float32, one big or many small mel
        # products) moves between releases and CPUs, in the last float32 bits (a fresh clone's transformers 5.25 failed
        # torch.equal on a piece size of 7). 1e-4 on (log10 + 4) / 4 is 0.004 dB, far above float32 rounding (~1e-6)
        # and far below a seam off by one frame (neighbouring frames differ by 0.01 at the median, up to 0.97 here).
        ours = whisper.log_mel(audio)
        assert ours.shape == extractor.shape
        torch.testing.assert_close(ours, extractor, rtol=0, atol=1e-4)
    finally:
        whisper.mel_piece = default


def test_stream_audio_streams_only_where_the_encoder_allows_it(wav2vec2):
    source = comfy(speechlike(2.2), 16000)
    streamed = stream_audio(source, W2V, wav2vec2, 25, whole_clips_of=8)
    whole = encode_audio(source, W2V, wav2vec2, 25, whole_clips_of=8)
    assert isinstance(streamed.features, StreamedFeatures) and streamed.num_frames == whole.num_frames
    assert torch.equal(streamed.features.materialize(), whole.features)
    assert torch.equal(streamed.audio.waveform, whole.audio.waveform)
    # a single-pass encoder (InferenceQuirks.audio_single_pass, e.g. Hallo) sees the whole audio at once: a tensor
    single = stream_audio(source, W2V, wav2vec2, 25, whole_clips_of=8, single_pass=True)
    assert isinstance(single.features, torch.Tensor)
    assert torch.equal(single.features, encode_audio(source, W2V, wav2vec2, 25, whole_clips_of=8, single_pass=True).features)
    logmel = stream_audio(source, LOGMEL, None, 25)
    assert isinstance(logmel.features, StreamedFeatures)
    assert torch.equal(logmel.features[:], encode_audio(source, LOGMEL, None, 25).features)


def test_demo_generation_with_streamed_features_is_identical():
    from emo_model import demo
    from emo_model.app.session import Session

    session = Session.load(demo.model_path(), device="cpu", dtype=torch.float32)
    source = comfy(speechlike(1.3, seed=3), 16000)
    streamed = session.encode_audio(source)
    assert isinstance(streamed.features, StreamedFeatures) and streamed.features.computed == 0
    whole = encode_audio(source, session.config.audio, None, session.config.preset.fps)
    reference = session.encode_reference(torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)))
    settings = session.settings(steps=2)
    a = session.pipeline.generate_frames(reference, streamed.features, num_frames=streamed.num_frames, settings=settings)
    b = session.pipeline.generate_frames(reference, whole.features, num_frames=whole.num_frames, settings=settings)
    assert a.shape[0] == streamed.num_frames and torch.equal(a, b)
