"""Golden fixture for the speech-emotion classifier: MEMO's own labelling with funasr's emotion2vec, tiny weights.

Runs inside MEMO's venv (funasr 1.0.27, diffusers 0.31; torchaudio, audio_separator and librosa stubbed: the wav is
handed over as samples) on a checkout of memoavatar/memo at the pinned commit:

A. ``memo.utils.audio_utils.extract_audio_emotion_labels`` itself (MEMO a5aee301 :149-236) on 4.3 s of closed-form
   audio, with ``funasr.models.emotion2vec.model.Emotion2vec`` built from a tiny ``model_conf`` (1024 wide as
   MEMO's classifier requires, 2 + 1 blocks, layer-norm conv stack, post-norm blocks, ALiBi with per-head scales,
   3 extra tokens, an even positional kernel) loaded by MEMO's ``load_emotion2vec_model`` from a ``model.pt``, and
   MEMO's ``AudioEmotionClassifierModel`` (its defaults: 5 layers, 2048 channels) read by ``from_pretrained`` from a diffusers
   folder. Recorded: every window's input length, its ``extract_features(...)["x"]`` (window 0 in full, the mean of
   every window), the classifier's output, and the per-frame labels MEMO returns.
B. ``Emotion2vec.extract_features`` on one 1.1 s segment with the other switches: group-norm conv stack, pre-norm
   blocks (``layer_norm_first``), a LayerNorm before the positional convolutions, ALiBi scales per layer and per head
   on 12 of 16 heads, no extra tokens, an odd positional kernel.
E. MEMO's emotion input from a FILE: ``memo_from_files.stereo_emotion_wav`` (3.2 s of 24 kHz 16-bit stereo, speech left,
   a tone right) through MEMO's own ``resample_audio`` (the ffmpeg program, channels kept) and
   ``extract_audio_emotion_labels(wav_path=...)`` with A's weights (torchaudio.load: soundfile, int16 / 32768); MEMO
   classifies the first channel. Recorded: that channel (int16), the window probabilities, the per-frame labels.
C. The labelling rule alone: MEMO's function with a stand-in encoder/classifier whose label is the window's index
   (mod 9), for several audio lengths and frame counts: the window lengths and the per-frame labels.

Weights: the counter-hash recipe of common.py (the test regenerates them from the key/shape lists in meta.json).

    /work/parity/venv-memo/bin/python tools/parity/emotion2vec_original.py --memo-src /work/parity/memo \
        --out tests/parity/emotion2vec --work /tmp/e2v-work
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import digest, hashed_state_dict, package_versions, stub_packages, stub_xformers, synthetic_speech

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--memo-src", required=True)
p.add_argument("--out", required=True)
p.add_argument("--work", required=True, help="scratch folder for model.pt and the classifier folder")
p.add_argument("--seed", type=int, default=23)
args = p.parse_args()

sys.path.insert(0, args.memo_src)
stub_packages("audio_separator", "torchaudio", "librosa")
stub_xformers()
torch.set_grad_enabled(False)

import memo.utils.audio_utils as au
from funasr.models.emotion2vec.model import Emotion2vec
from memo.models.emotion_classifier import AudioEmotionClassifierModel

RATE = 16000


def model_conf(**audio_changes) -> dict:
    audio = {
        "feature_encoder_spec": "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]", "extractor_mode": "layer_norm",
        "conv_pos_width": 8, "conv_pos_depth": 2, "conv_pos_groups": 16, "conv_pos_pre_ln": False,
        "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "prenet_depth": 1, "prenet_layerdrop": 0.0, "prenet_dropout": 0.0,
        "decoder": None, "use_alibi_encoder": True, "local_grad_mult": 1.0, "num_extra_tokens": 3, "init_extra_token_zero": False,
        "model_depth": 2, "learned_alibi_scale": True, "learned_alibi_scale_per_head": True, "learned_alibi_scale_per_layer": False,
        "num_alibi_heads": 16, "alibi_scale": 1.0, "learned_alibi": False, "alibi_max_pos": None,
        "mask_prob": 0.5, "mask_length": 5, "inverse_mask": False, "mask_noise_std": 0.01, "mask_prob_min": None, "mask_dropout": 0.0,
        "add_masks": False, "remove_masks": False, "keep_masked_pct": 0.0, "encoder_zero_mask": True, "mask_channel_prob": 0.0,
        "mask_channel_length": 64, "ema_local_encoder": False, "type": "AUDIO",
    }
    audio.update(audio_changes)
    return {
        "loss_beta": 0.0, "loss_scale": None, "depth": 2, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_heads": 16,
        "norm_eps": 1e-5, "norm_affine": True, "encoder_dropout": 0.1, "post_mlp_drop": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.0, "dropout_input": 0.0, "layerdrop": 0.05, "embed_dim": 1024, "mlp_ratio": 0.25,
        "layer_norm_first": False, "average_top_k_layers": 2, "end_of_block_targets": False, "clone_batch": 1, "normalize": True,
        "modalities": {"audio": audio},
    }


def spec_of(module: torch.nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in module.state_dict().items()]


def build_encoder(conf: dict, seed: int):
    model = Emotion2vec(model_conf=conf, vocab_size=-1).eval()
    spec = spec_of(model)
    state = hashed_state_dict([(k, s) for k, s in spec], seed)
    model.load_state_dict(state, strict=True)
    return model, spec, state


def wave_a(n: int) -> torch.Tensor:
    """Two kinds of sound so the windows differ: voiced speech, then a gliding square-ish tone with a burst."""
    t = np.arange(n, dtype=np.float64) / RATE
    speech = synthetic_speech(n).astype(np.float64)
    tone = 0.3 * np.tanh(4 * np.sin(2 * np.pi * (300 + 200 * t) * t)) + 0.2 * np.sin(2 * np.pi * 2500 * t) * (np.sin(2 * np.pi * 1.3 * t) > 0.6)
    mix = np.where(t < 2.2, speech, tone)
    return torch.from_numpy(mix.astype(np.float32))


os.makedirs(args.work, exist_ok=True)
os.makedirs(args.out, exist_ok=True)
out_tensors: dict[str, torch.Tensor] = {}
meta: dict = {
    "memo_commit": subprocess.run(["git", "-C", args.memo_src, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip(),
    "packages": package_versions("torch", "funasr", "diffusers", "omegaconf"),
    "stubbed_packages": ["torchaudio (load returns the given samples in A and C; reads the wav with soundfile in E)",
                         "audio_separator", "librosa", "xformers"],
}

# ---- A: MEMO's extract_audio_emotion_labels end to end -------------------------------------------------------------
conf_a = model_conf()
enc_a, spec_a, state_a = build_encoder(conf_a, args.seed)
torch.save(state_a, os.path.join(args.work, "model.pt"))
cls_dir = os.path.join(args.work, "memo")
classifier = AudioEmotionClassifierModel().eval()  # its __init__ arguments are not registered: from_pretrained builds the defaults
cls_spec = spec_of(classifier)
cls_state = hashed_state_dict([(k, s) for k, s in cls_spec], args.seed + 1)
# Hashed weights alone give every window the same class; the last bias is set to minus the mean over the windows of
# the logits without it, so the classes are near a tie and the windows' own features decide (stored in the fixture).
wav = wave_a(int(4.3 * RATE))
cls_state["layers.fc5.bias"] = torch.zeros(9)
classifier.load_state_dict(cls_state, strict=True)
starts = [(0, 2 * RATE)] + [(i - RATE, i + 2 * RATE) for i in range(RATE, wav.shape[0] - RATE, RATE)] + [(wav.shape[0] - 2 * RATE, wav.shape[0])]
pre = torch.stack([classifier.layers(enc_a.extract_features(torch.nn.functional.layer_norm(wav[a:b], wav[a:b].shape).view(1, -1))["x"].mean(dim=1))[0]
                   for a, b in starts])
cls_state["layers.fc5.bias"] = -pre.mean(dim=0)
classifier.load_state_dict(cls_state, strict=True)
classifier.save_pretrained(os.path.join(cls_dir, "misc", "audio_emotion_classifier"), safe_serialization=True)

AUDIO_LENGTH = 144  # ceil(4.3 s * 30 fps) = 129 frames, padded to whole clips of 16 (MEMO's preprocess_audio)
rec = {"inputs": [], "x": [], "probs": []}


class RecordingEmotion2vec(Emotion2vec):
    def extract_features(self, source, *a, **kw):
        res = super().extract_features(source, *a, **kw)
        rec.setdefault("digest", digest(self.state_dict()))
        rec["inputs"].append(source.shape[-1])
        rec["x"].append(res["x"][0].clone())
        return res


class RecordingClassifier(AudioEmotionClassifierModel):
    def forward(self, x):
        y = super().forward(x)
        rec["probs"].append(y[0].clone())
        return y


au.Emotion2vec = RecordingEmotion2vec
au.AudioEmotionClassifierModel = RecordingClassifier
au.download_model = lambda model: {"model_conf": conf_a, "init_param": os.path.join(args.work, "model.pt")}
au.torchaudio = types.SimpleNamespace(load=lambda path: (wav[None].clone(), RATE))
labels, classes = au.extract_audio_emotion_labels(model=cls_dir, wav_path="given.wav", emotion2vec_model="tiny",
                                                  audio_length=AUDIO_LENGTH, device="cpu")
# the model MEMO loaded (load_emotion2vec_model from model.pt) holds the hashed weights
assert rec["digest"] == digest(state_a), "MEMO's loader did not load the hashed weights"
out_tensors["a.waveform"] = wav
out_tensors["a.window0.x"] = rec["x"][0][:32].clone()  # the first 32 steps (fixture size)
out_tensors["a.classifier.fc5.bias"] = cls_state["layers.fc5.bias"]
out_tensors["a.window_means"] = torch.stack([x.mean(dim=0) for x in rec["x"]])
out_tensors["a.window_probs"] = torch.stack(rec["probs"])
out_tensors["a.frame_labels"] = labels.to(torch.int64)
with open(os.path.join(cls_dir, "misc", "audio_emotion_classifier", "config.json")) as fh:
    cls_config = json.load(fh)
meta["a"] = {
    "model_conf": conf_a, "encoder": {"spec": spec_a, "seed": args.seed, "digest": digest(state_a)},
    "window0_steps": int(rec["x"][0].shape[0]),
    "classifier": {"fc5_bias": "a.classifier.fc5.bias (replaces the hashed one)", "config": cls_config, "spec": cls_spec,
                   "seed": args.seed + 1,
                   "digest": digest(cls_state)},
    "samples": int(wav.shape[0]), "audio_length": AUDIO_LENGTH, "emotion_classes": int(classes),
    "window_inputs": rec["inputs"], "window_labels": [int(p.argmax()) for p in rec["probs"]],
}
print("A: windows", rec["inputs"], "labels", meta["a"]["window_labels"], "frames", labels.tolist())

# ---- E: MEMO's emotion input from a FILE: the ffmpeg program's 16 kHz wav, torchaudio.load, the first channel --------
# inference.py:118-121 resample_audio (MEMO's own function: the ffmpeg program, -ar 16000, channels kept) on a stereo
# 24 kHz file whose channels differ, then extract_audio_emotion_labels(wav_path=that wav) with the tiny weights of A;
# torchaudio.load reads the wav as its soundfile backend does (int16 / 32768, [channels, n]; no wheel for this torch).
import hashlib
from pathlib import Path

import soundfile
from memo_from_files import EMOTION_RATE, EMOTION_SECONDS, stereo_emotion_wav

stereo = stereo_emotion_wav(Path(args.work) / "stereo_emotion.wav")
wav16k = os.path.join(args.work, "stereo_emotion-16k.wav")
au.resample_audio(str(stereo), wav16k)
read = {}


def torchaudio_load(path):
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    read["wav"] = torch.from_numpy(data.T.copy())
    return read["wav"].clone(), rate


au.torchaudio = types.SimpleNamespace(load=torchaudio_load)
rec.update(inputs=[], x=[], probs=[])
AUDIO_LENGTH_E = 96  # ceil(3.2 s * 30 fps) = 96 frames: 6 whole clips of 16
labels_e, _ = au.extract_audio_emotion_labels(model=cls_dir, wav_path=wav16k, emotion2vec_model="tiny",
                                              audio_length=AUDIO_LENGTH_E, device="cpu")
assert read["wav"].shape[0] == 2, "the ffmpeg program's wav should keep both channels"
out_tensors["e.first_16k"] = torch.round(read["wav"][0] * 32768).to(torch.int16)  # the channel MEMO classified
out_tensors["e.window_probs"] = torch.stack(rec["probs"])
out_tensors["e.frame_labels"] = labels_e.to(torch.int64)
meta["e"] = {
    "file": {"name": stereo.name, "sha256": hashlib.sha256(stereo.read_bytes()).hexdigest(), "rate": EMOTION_RATE,
             "seconds": EMOTION_SECONDS, "channels": 2, "made_by": "tools/parity/memo_from_files.py stereo_emotion_wav"},
    "memo": "inference.py:118 resample_audio (ffmpeg -ar 16000) -> audio_utils.py:197-199 torchaudio.load, wav[0]",
    "wav_16k_channels": int(read["wav"].shape[0]), "samples_16k": int(read["wav"].shape[1]),
    "audio_length": AUDIO_LENGTH_E, "window_inputs": rec["inputs"], "window_labels": [int(p.argmax()) for p in rec["probs"]],
    "ffmpeg": subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0],
}
print("E: windows", rec["inputs"], "labels", meta["e"]["window_labels"])

# ---- B: the other switches, one segment ------------------------------------------------------------------------------
conf_b = model_conf(extractor_mode="default", conv_pos_pre_ln=True, conv_pos_width=9, conv_pos_depth=3,
                    learned_alibi_scale_per_layer=True, num_alibi_heads=12, num_extra_tokens=0)
conf_b["layer_norm_first"] = True
enc_b, spec_b, state_b = build_encoder(conf_b, args.seed + 2)
seg = wav[5000 : 5000 + int(1.1 * RATE)]
x_b = enc_b.extract_features(torch.nn.functional.layer_norm(seg, seg.shape).view(1, -1))["x"][0]
out_tensors["b.x"] = x_b[:24].clone()  # the first 24 steps (fixture size)
out_tensors["b.x_mean"] = x_b.mean(dim=0)
meta["b"] = {"segment": [5000, 5000 + int(1.1 * RATE)], "steps": int(x_b.shape[0]), "model_conf": conf_b, "encoder": {"spec": spec_b, "seed": args.seed + 2, "digest": digest(state_b)}}
print("B:", tuple(x_b.shape))

# ---- C: the labelling rule ------------------------------------------------------------------------------------------
cases = []


class IndexEncoder:
    def __init__(self, **kw):
        self.count = 0

    def to(self, *a, **k):
        return self

    def eval(self):
        return self

    def extract_features(self, x, *a, **kw):
        cur["inputs"].append(int(x.shape[-1]))
        return {"x": torch.zeros(1, 2, 4)}


class IndexClassifier:
    num_emotion_classes = 9

    @classmethod
    def from_pretrained(cls, *a, **k):
        return cls()

    def to(self, *a, **k):
        return self

    def eval(self):
        return self

    def __call__(self, x):
        k = len(cur["inputs"]) - 1
        return torch.nn.functional.one_hot(torch.tensor([k % 9]), 9).float() * 5


au.Emotion2vec = IndexEncoder
au.AudioEmotionClassifierModel = IndexClassifier
au.load_emotion2vec_model = lambda **kw: None
au.download_model = lambda model: {}
for seconds, frames in [(0.4, 16), (1.0, 32), (1.5, 48), (2.0, 64), (2.7, 96), (4.3, 144), (7.01, 224), (9.5, 300), (3.2, 17)]:
    n = round(seconds * RATE)
    cur = {"inputs": []}
    au.torchaudio = types.SimpleNamespace(load=lambda path, n=n: (torch.zeros(1, n), RATE))
    lab, _ = au.extract_audio_emotion_labels(model="x", wav_path="x", emotion2vec_model="x", audio_length=frames, device="cpu")
    cases.append({"samples": n, "frames": frames, "window_inputs": cur["inputs"], "frame_labels": lab.tolist()})
meta["c"] = cases
print("C:", [(c["samples"], c["window_inputs"]) for c in cases])

# ---- D: the full-size layout (presumed config) ----------------------------------------------------------------------
# emotion2vec_plus_large's config.yaml is not in this session's sources: data2vec 2.0's large audio recipe
# (fairseq examples/data2vec/config/v2/large_audio_only_task.yaml: 1024 wide, 16 heads, 8 + 16 blocks, the default conv
# stack, 5 positional convolutions of width 95 in 16 groups, ALiBi with per-head scales) with emotion2vec's 10 extra
# tokens. funasr's Emotion2vec built from it on the meta device gives the key/shape layout our loader must map.
conf_d = model_conf(prenet_depth=8, model_depth=16, conv_pos_width=95, conv_pos_depth=5, conv_pos_groups=16,
                    num_extra_tokens=10, feature_encoder_spec="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]")
conf_d.update(depth=16, mlp_ratio=4.0)
with torch.device("meta"):
    full = Emotion2vec(model_conf=conf_d, vocab_size=9)  # vocab 9: the utterance head the published file carries
meta["d"] = {"model_conf": conf_d, "spec": spec_of(full), "parameters": sum(p.numel() for p in full.parameters()),
             "presumed": "data2vec 2.0 large audio recipe + 10 extra tokens; not checked against the published model.pt"}
print("D:", len(meta["d"]["spec"]), "tensors,", meta["d"]["parameters"], "parameters")

from safetensors.torch import save_file

save_file({k: v.contiguous() for k, v in out_tensors.items()}, os.path.join(args.out, "emotion.safetensors"))
with open(os.path.join(args.out, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print("wrote", args.out, math.ceil(os.path.getsize(os.path.join(args.out, "emotion.safetensors")) / 1024), "KiB")
