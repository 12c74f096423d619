"""Host memory of the audio features for long audio: whole (one go) vs streamed per clip.

    python tools/audio_memory.py [--minutes 1,5,10] [--encoders logmel,wav2vec2,whisper]

Each row runs in its own process: the encoder is built at full size with random weights (wav2vec2-base
12 x 768 at EMO's 30 fps, whisper-tiny 5 x 384 at EchoMimic's 24 fps, the demo's 32-band log-mel at
25 fps), a 16 kHz mono AUDIO dict of that many minutes is made, then the features are computed and read
clip by clip as the pipeline reads them (12-frame clips, 16 for whisper). The peak resident memory above
the process's memory just before (encoder and AUDIO dict already there) is printed for both ways.
Not a test: it takes minutes on a CPU (wav2vec2-base encodes the whole audio in both ways).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENCODERS = {"logmel": (25.0, 12), "wav2vec2": (30.0, 12), "whisper": (24.0, 16)}  # fps, frames per clip


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class Peak:
    """Peak resident memory while the block runs (sampled every millisecond)."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        return False


def _encoder(kind: str):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from emo_model.audio.encoder_base import WAV2VEC2_CONFIG_DIR
    from emo_model.audio.encoders import LogMelAudioEncoder
    from emo_model.audio.wav2vec2 import Wav2Vec2AudioEncoder
    from emo_model.audio.whisper import WHISPER_CONFIG_DIR, WhisperAudioEncoder
    from emo_model.configs import AudioFeatureConfig

    torch.manual_seed(0)
    if kind == "logmel":
        cfg = AudioFeatureConfig(kind="logmel", layers=1, dim=32, margin=2)
        return cfg, LogMelAudioEncoder(cfg)
    if kind == "wav2vec2":
        cfg = AudioFeatureConfig(kind="wav2vec2", layers=12, dim=768, margin=2)
        config = Wav2Vec2Config.from_json_file(WAV2VEC2_CONFIG_DIR / "config.json")
        return cfg, Wav2Vec2AudioEncoder(Wav2Vec2Model(config).eval(), cfg)
    cfg = AudioFeatureConfig(kind="whisper", layers=5, dim=384, margin=2, whisper_window=(-4, 5))
    config = WhisperConfig.from_json_file(WHISPER_CONFIG_DIR / "config.json")
    return cfg, WhisperAudioEncoder(WhisperEncoder(config).eval(), cfg)


def worker(kind: str, minutes: float, mode: str) -> dict:
    import torch

    from emo_model.audio.encoders import encode_audio
    from emo_model.audio.stream import stream_audio

    torch.set_num_threads(1)
    fps, clip = ENCODERS[kind]
    cfg, encoder = _encoder(kind)
    samples = int(minutes * 60 * 16000)
    t = torch.arange(samples, dtype=torch.float32) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * 180 * t) * (0.55 + 0.45 * torch.sin(2 * torch.pi * 3 * t))
    source = {"waveform": wave.reshape(1, 1, -1), "sample_rate": 16000}
    del t, wave
    t0 = time.perf_counter()
    with Peak() as peak:
        encode = encode_audio if mode == "whole" else stream_audio
        audio = encode(source, cfg, encoder, fps)
        rows = audio.features.shape[0]
        for start in range(0, rows, clip):  # as the pipeline reads them (motion-frames strategy)
            index = torch.arange(start, start + clip).clamp(max=rows - 1)
            audio.features[index].sum()
    return {"peak_mb": (peak.peak - peak.start) / 2**20, "seconds": time.perf_counter() - t0, "frames": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="1,5,10")
    parser.add_argument("--encoders", default="logmel,whisper,wav2vec2")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "MINUTES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, minutes, mode = args.worker
        print(json.dumps(worker(kind, float(minutes), mode)))
        return 0
    header = (
        f"{'encoder':9} {'audio':>7} {'frames':>7} {'whole: peak':>12} {'streamed: peak':>15} {'whole s':>8} {'streamed s':>10}"
    )
    print(header)
    print("-" * len(header))
    for kind in args.encoders.split(","):
        for minutes in (float(m) for m in args.minutes.split(",")):
            res = {}
            for mode in ("whole", "streamed"):
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", kind, str(minutes), mode], capture_output=True, text=True, check=True
                )
                res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            w, s = res["whole"], res["streamed"]
            print(
                f"{kind:9} {minutes:>5g} m {w['frames']:>7} {w['peak_mb']:>9.0f} MB {s['peak_mb']:>12.0f} MB "
                f"{w['seconds']:>8.1f} {s['seconds']:>10.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
