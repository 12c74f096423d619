"""Golden audio front ends from the ORIGINALS' own loaders: decoding, resampling and vocal separation.

Runs in the audio venv (tools/parity/README.md, "Audio front end"), never in ours, and imports each original from its
checkout (no original code is copied here):

    venv-audio/bin/python tools/parity/audio_original.py --hallo-src $P/hallo --memo-src $P/memo \
        --echo-src $P/echomimic --separator-024 $P/audio-separator-0.24.1 --out tests/parity/audio

What it makes and runs:

1. Inputs (fixed, closed-form + seeded noise, 0.4 s): ``speech16k.wav`` (16 kHz mono s16), ``song44k.wav`` (44.1 kHz
   stereo s16: a voice, a chord and noise), ``song.mp3`` and ``song.m4a`` (the song, encoded by the ffmpeg program:
   libmp3lame / the native AAC encoder at 64 kb/s; a few KB each).
2. Per input, what wav2vec2 / whisper would receive (the originals' code run up to that point):

   - ``hallo.<input>``: Hallo's ``AudioProcessor.preprocess`` (hallo/datasets/audio_processor.py, no separator:
     ``librosa.load(path, sr=16000)``), captured where it calls the wav2vec2 feature extractor.
   - ``memo.<input>``: MEMO's ``inference.py`` audio steps: ``resample_audio`` (the ffmpeg program, ``-ar 16000``) then
     ``preprocess_audio`` (memo/utils/audio_utils.py, no separator), captured at the feature extractor.
   - ``echomimic.<input>``: EchoMimic's whisper ``load_audio`` (src/models/whisper/whisper/audio.py: the ffmpeg
     program to s16le mono 16 kHz).
3. Vocal separation with a STAND-IN model (``standin_Kim_Vocal_2.onnx``, written to ``--out``: 12 KB, the input /
   output signature of Kim_Vocal_2.onnx, [batch, 4, 3072, 256] float32 -> the same; a per-bin gain then a 4x4 mix
   of the (L re, L im, R re, R im) channels, from a fixed seed; its numbers are also stored as ``standin.gain`` /
   ``standin.mix``). It is given to the originals as ``Kim_Vocal_2.onnx`` in a scratch model folder with the UVR
   model-data entry of Kim_Vocal_2 under the stand-in's hash (no download: the JSON files audio-separator would
   fetch are written there):

   - ``hallo_sep.<input>``: Hallo's ``AudioProcessor`` with its separator (audio-separator 0.17.2, installed):
     ``Separator(output_single_stem="vocals")``, ``separate``, ``resample_audio`` to 16 kHz, ``librosa.load``;
     ``hallo_sep.<input>.vocals`` is the int16 stem file the separator wrote (44.1 kHz stereo).
   - ``memo_sep.<input>``: MEMO's steps with its separator (audio-separator 0.24.1 from ``--separator-024``, put
     first on ``sys.path`` in a subprocess).

Injected: the wav2vec2 model and feature extractor (stubs that record the samples and stop the run), transformers /
funasr / torchaudio / video packages (not needed for these steps). Writes ``outputs.safetensors`` (every output
above, the stand-in's numbers) and ``meta.json`` (commits, packages, ffmpeg version, inputs' digests) to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import package_versions, stub_packages, synthetic_speech  # noqa: E402

SECONDS = 0.4
INPUTS = ("speech16k.wav", "song44k.wav", "song.mp3", "song.m4a")
SEPARATED = {"hallo_sep": ("song44k.wav", "song.mp3"), "memo_sep": ("speech16k.wav", "song.m4a")}
# UVR's model data of Kim_Vocal_2.onnx (audio-separator looks it up by the file's MD5 in mdx_model_data.json)
KIM_VOCAL_2 = {"compensate": 1.009, "mdx_dim_f_set": 3072, "mdx_dim_t_set": 8, "mdx_n_fft_scale_set": 7680,
               "primary_stem": "Vocals"}
DIM_F, DIM_T = 3072, 256


class Captured(Exception):
    """Raised by the stub feature extractor once it has the samples."""


CAPTURE: dict = {}


class FeatureExtractorStub:
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()

    def __call__(self, speech_array, sampling_rate=None, **kwargs):
        CAPTURE["speech"] = np.array(speech_array, dtype=np.float32)
        CAPTURE["rate"] = sampling_rate
        raise Captured


class Wav2VecStub:
    class feature_extractor:  # noqa: N801 - the attribute the originals call _freeze_parameters on
        @staticmethod
        def _freeze_parameters():
            pass

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()

    def to(self, *args, **kwargs):
        return self


# --------------------------------------------------------------------------------------------------
# inputs


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """int16 PCM wav of float samples [channels, n] (round, clip), with the stdlib writer."""
    pcm = np.clip(np.round(samples.T * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def song(rate: int, seed: int = 7) -> np.ndarray:
    """A voice, a chord and noise in stereo (the voice centred, the chord panned), peak about 0.7."""
    n = int(SECONDS * rate)
    t = np.arange(n) / rate
    voice = synthetic_speech(n, rate).astype(np.float64)
    chord = sum(0.08 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63))
    noise = np.random.default_rng(seed).standard_normal((2, n)) * 0.02
    return np.stack([voice + 1.2 * chord, voice + 0.6 * chord]) + noise


def make_inputs(out: Path) -> None:
    write_wav(out / "speech16k.wav", synthetic_speech(int(SECONDS * 16000), 16000)[None].astype(np.float64) * 1.5, 16000)
    write_wav(out / "song44k.wav", song(44100), 44100)
    for name, codec in (("song.mp3", ["-c:a", "libmp3lame"]), ("song.m4a", ["-c:a", "aac"])):
        cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(out / "song44k.wav"), *codec, "-b:a", "64k", str(out / name)]
        subprocess.run(cmd, check=True)


def make_standin(out: Path, seed: int = 11) -> dict[str, np.ndarray]:
    """The stand-in separator: per-frequency-bin gain in 0..1, then a 1x1 convolution mixing the 4 channels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    bins = np.arange(DIM_F)
    gain = (0.5 + 0.5 * np.cos(bins / DIM_F * 9.0)) * (0.6 + 0.4 * rng.random(DIM_F))
    gain = gain.astype(np.float32).reshape(1, 1, DIM_F, 1)
    mix = (np.eye(4) * 0.8 + 0.05 * rng.standard_normal((4, 4))).astype(np.float32).reshape(4, 4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "gain"], ["scaled"]), helper.make_node("Conv", ["scaled", "mix"], ["output"])],
        "standin_mdx",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, DIM_F, DIM_T])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, DIM_F, DIM_T])],
        initializer=[numpy_helper.from_array(gain, "gain"), numpy_helper.from_array(mix, "mix")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="emo-parity")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "standin_Kim_Vocal_2.onnx"))
    return {"standin.gain": gain.reshape(-1), "standin.mix": mix.reshape(4, 4)}


def separator_folder(work: Path, standin: Path) -> Path:
    """A model folder as the originals' downloads have it, with the stand-in as Kim_Vocal_2.onnx and the JSON files
    audio-separator would otherwise download."""
    folder = work / "audio_separator"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(standin, folder / "Kim_Vocal_2.onnx")
    digest = hashlib.md5((folder / "Kim_Vocal_2.onnx").read_bytes()).hexdigest()
    (folder / "mdx_model_data.json").write_text(json.dumps({digest: KIM_VOCAL_2}))
    (folder / "vr_model_data.json").write_text("{}")
    lists = ("vr_download_list", "mdx_download_list", "mdx_download_vip_list", "demucs_download_list", "mdx23_download_list",
             "mdx23c_download_list", "mdx23c_download_vip_list", "roformer_download_list")
    checks = {name: {} for name in lists}
    checks["mdx_download_list"] = {"MDX-Net Model: Kim Vocal 2": "Kim_Vocal_2.onnx"}
    (folder / "download_checks.json").write_text(json.dumps(checks))
    return folder


# --------------------------------------------------------------------------------------------------
# the originals


def run_hallo(src: Path, inputs: Path, work: Path, separator: Path | None, names) -> dict[str, np.ndarray]:
    stub_packages("transformers", "cv2", "mediapipe", "moviepy", "av")
    sys.path.insert(0, str(src))
    from hallo.datasets import audio_processor

    audio_processor.Wav2VecModel = Wav2VecStub
    audio_processor.Wav2Vec2FeatureExtractor = FeatureExtractorStub
    out = {}
    for name in names:
        cache = work / f"hallo_cache_{name}"
        with audio_processor.AudioProcessor(
            16000, 25, "wav2vec2", False,
            str(separator) if separator else None, "Kim_Vocal_2.onnx" if separator else None, str(cache), device="cpu",
        ) as proc:
            try:
                proc.preprocess(str(inputs / name), 16)
            except Captured:
                pass
        key = ("hallo_sep." if separator else "hallo.") + name
        out[key] = CAPTURE.pop("speech")
        if separator:
            out[key + ".vocals"] = read_stem(cache)
    return out


def read_stem(cache: Path) -> np.ndarray:
    """The separator's own output file (int16 wav, [channels, samples])."""
    stems = [p for p in cache.iterdir() if p.suffix == ".wav" and not p.stem.endswith("-16k")]
    assert len(stems) == 1, stems
    with wave.open(str(stems[0])) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels()).T
    return np.ascontiguousarray(data)


def run_memo(src: Path, inputs: Path, work: Path, separator: Path | None, names) -> dict[str, np.ndarray]:
    stub_packages("transformers", "torchaudio", "funasr", "diffusers")
    for name in ("memo.models.emotion_classifier", "memo.models.wav2vec"):
        stub = types.ModuleType(name)
        stub.AudioEmotionClassifierModel = stub.Wav2VecModel = None
        sys.modules[name] = stub
    sys.path.insert(0, str(src))
    from memo.utils import audio_utils

    audio_utils.Wav2VecModel = Wav2VecStub
    audio_utils.Wav2Vec2FeatureExtractor = FeatureExtractorStub
    out = {}
    for name in names:
        cache = work / f"memo_cache_{name}"
        cache.mkdir(parents=True, exist_ok=True)
        # inference.py: resample_audio(input, cache/<name>-16k.wav), then preprocess_audio(...) on that file
        wav16 = audio_utils.resample_audio(str(inputs / name), str(cache / f"{name.split('.')[0]}-16k.wav"))
        try:
            audio_utils.preprocess_audio(
                wav_path=wav16, fps=30, wav2vec_model="wav2vec2", cache_dir=str(cache), device="cpu",
                vocal_separator_model=str(separator / "Kim_Vocal_2.onnx") if separator else None,
                num_generated_frames_per_clip=16,
            )
        except Captured:
            pass
        key = ("memo_sep." if separator else "memo.") + name
        out[key] = CAPTURE.pop("speech")
        if separator:
            stems = [p for p in cache.iterdir() if p.suffix == ".wav" and "(Vocals)" in p.name and not p.stem.endswith("-16k")]
            out[key + ".vocals"] = read_stem_file(stems[0])
    return out


def read_stem_file(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels()).T
    return np.ascontiguousarray(data)


def run_echomimic(src: Path, inputs: Path, names) -> dict[str, np.ndarray]:
    """whisper's audio.py loaded as a module of a stand-in package (its __init__ pulls in the whole model)."""
    import importlib.util

    folder = src / "src" / "models" / "whisper" / "whisper"
    package = types.ModuleType("echo_whisper")
    package.__path__ = [str(folder)]
    sys.modules["echo_whisper"] = package
    for mod in ("utils", "audio"):
        spec = importlib.util.spec_from_file_location(f"echo_whisper.{mod}", folder / f"{mod}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    load_audio = sys.modules["echo_whisper.audio"].load_audio
    return {f"echomimic.{name}": np.asarray(load_audio(str(inputs / name)), dtype=np.float32) for name in names}


def git_commit(path: Path) -> str:
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def part(args) -> None:
    """One original in this process (audio-separator versions differ, so each runs in its own interpreter)."""
    work, inputs = Path(args.work), Path(args.out)
    stub_packages("torchvision")  # onnx2torch (audio-separator) and Hallo's util import it; nothing here runs it
    separator = Path(args.separator) if args.separator else None
    if args.part == "hallo":
        result = run_hallo(Path(args.hallo_src), inputs, work, separator, SEPARATED["hallo_sep"] if separator else INPUTS)
    elif args.part == "memo":
        if separator:
            sys.path.insert(0, args.separator_024)
        result = run_memo(Path(args.memo_src), inputs, work, separator, SEPARATED["memo_sep"] if separator else INPUTS)
    else:
        result = run_echomimic(Path(args.echo_src), inputs, INPUTS)
    import audio_separator

    np.savez(work / f"part_{args.part}{'_sep' if separator else ''}.npz", **result,
             __separator_version=np.array(getattr(audio_separator, "__file__", "")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hallo-src", required=True)
    p.add_argument("--memo-src", required=True)
    p.add_argument("--echo-src", required=True)
    p.add_argument("--separator-024", required=True, help="audio-separator 0.24.1's source folder (git archive v0.24.1)")
    p.add_argument("--out", required=True)
    p.add_argument("--part", choices=("hallo", "memo", "echomimic"))
    p.add_argument("--work")
    p.add_argument("--separator")
    p.add_argument("--seconds", type=float, default=SECONDS, help="input length (0.4: CI fixture; 7: several chunks)")
    args = p.parse_args()
    globals()["SECONDS"] = args.seconds  # make_inputs / meta read it
    if args.part:
        return part(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*"):
        if stale.is_file() and stale.name != "floor.json":
            stale.unlink()
    make_inputs(out)
    tensors = make_standin(out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = separator_folder(work, out / "standin_Kim_Vocal_2.onnx")
        base = [sys.executable, __file__, "--hallo-src", args.hallo_src, "--memo-src", args.memo_src, "--echo-src", args.echo_src,
                "--separator-024", args.separator_024, "--out", str(out), "--work", str(work), "--seconds", str(args.seconds)]
        runs = [["--part", "hallo"], ["--part", "memo"], ["--part", "echomimic"],
                ["--part", "hallo", "--separator", str(folder)], ["--part", "memo", "--separator", str(folder)]]
        versions = {}
        for extra in runs:
            subprocess.run(base + extra, check=True)
        for npz in sorted(work.glob("part_*.npz")):
            with np.load(npz) as data:
                for key in data.files:
                    if key == "__separator_version":
                        versions[npz.stem] = str(data[key])
                    else:
                        tensors[key] = data[key]
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sorted(tensors.items())},
              str(out / "outputs.safetensors"))
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    meta = {
        "seconds": SECONDS,
        "inputs": {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in INPUTS},
        "separated": SEPARATED,
        "kim_vocal_2_model_data": KIM_VOCAL_2,
        "commits": {name: git_commit(Path(src)) for name, src in
                    (("hallo", args.hallo_src), ("memo", args.memo_src), ("echomimic", args.echo_src))},
        "ffmpeg": ffmpeg,
        "separator_sources": versions,
        "packages": package_versions("librosa", "soundfile", "soxr", "audioread", "numpy", "audio-separator", "onnxruntime",
                                     "torch", "pydub"),
        "audio_separator_0_24_1": args.separator_024,
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(tensors)} outputs to {out}")


if __name__ == "__main__":
    main()
