"""Golden module outputs from the ORIGINAL MEMO code (memoavatar/memo), at a tiny size.

Runs in MEMO's venv (see tools/parity/README.md), never in ours, and imports MEMO from a checkout:

    venv-memo/bin/python tools/parity/memo_original.py --memo-src /work/parity/memo --out tests/parity/memo

(the fixtures are made through tools/parity/floor.py, which runs this twice with different thread counts and writes
``floor.json``; the exact commands are in tools/parity/README.md).

What it builds and runs (MEMO's own classes, every parameter from ``common.hashed_state_dict``, so the test
regenerates the weights instead of storing them):

1. ``memo.models.motion_module.MemoryLinearAttnTemporalModule`` (64 channels, 4 heads, 2 transformer blocks of
   2 "Temporal_Self" attentions, frame positions of length 32) with ``MemoryLinearAttnProcessor`` set the way
   MEMO's ``inference.py`` gets it (``set_use_memory_efficient_attention_xformers``, here with False: the
   processor is the same, no CUDA needed). 3 consecutive clips x 2 denoising calls, exactly the flags MEMO's
   pipeline passes: ``is_new_audio = (clip == 0)``, ``update_past_memory = (step == 0)``; 2 videos in the
   batch (the two guidance branches), 4 frames per clip, 3 past frames per clip, 3x2 tokens.
2. ``memo.models.transformer_3d.Transformer3DModel(use_audio_module=True)`` (MEMO's emotion-conditioned joint
   audio module: ``JointAudioTemporalBasicTransformerBlock`` with ``EmoAdaLayerNorm``s and
   ``JointAttnProcessor2_0``) twice: module A (64 channels, attention width 32 with 2 heads: proj_in/proj_out
   map between the two, audio width 24, 5 audio tokens per frame, 9 emotion classes + the null class) and
   module B, the network's last one (``is_final_block=True``: no ``to_add_out`` / ``audio_ff`` / ``audio_norm3``,
   no audio out), fed with A's audio output as in MEMO's UNet. Emotion per branch: [9 (null), 4], then [9, 0].

Writes ``modules.safetensors`` (inputs and outputs, 0.3 MB) and ``meta.json`` (commit, packages, settings,
the weight key/shape lists, seeds and digests) to ``--out``.

3. With ``--pipeline WORK``: MEMO's own ``inference.py`` ``main()`` (clip loop, ``VideoPipeline``, FlowMatch Euler,
   CFG) on tiny models written as MEMO's four diffusers folders (``reference_net``, ``diffusion_net``, ``image_proj``,
   ``audio_proj``; config.json + hash-generated safetensors) in ``WORK/checkpoint``: 2 clips of 4 frames with 4 past
   frames (as MEMO's 16 and 16: the past frames are the whole previous clip, the first clip's are the portrait, and
   the ReferenceNet batch has an odd 1 + 4 rows per guidance copy, so its face-token tiling falls as at full size), 64x64, 3 steps, CFG 3.5, fp32, 30 fps; the tiny VAE and
   wav2vec2 of the Hallo fixture (``tests/parity/hallo/{vae,wav2vec2}``). Injected (components we do not ship):
   ``preprocess_image`` returns the given portrait and face embedding (no insightface), ``resample_audio`` is the
   identity and ``librosa.load`` returns the given 16 kHz samples, no vocal separator, the per-frame emotion labels
   are given (no emotion2vec; clip 1 has a tie so ``torch.mode``'s choice is exercised), ``tensor_to_video`` keeps the
   tensor. ``--clips N`` / ``--cfg X`` change the clip count and guidance (the CI fixture: 3 clips, CFG 4.5, issue 24's
   hard case); ``--dtype bf16`` runs MEMO in its inference.yaml precision (pipeline stages only). xformers is off (CPU); the memory-guided temporal layers get ``MemoryLinearAttnProcessor`` as enabling
   xformers gives them (the other attentions keep SDPA, the same math as xformers). Writes ``stages.safetensors``
   (every stage: audio windows, per clip the reference pixels and latents, every ReferenceNet feature, noise, per
   step the denoiser input / both branch outputs / guided velocity / latents, decoded frames; the video) and a
   ``pipeline`` section in ``meta.json`` (configs of the four folders, weight specs, seeds, digests).
4. With ``--pipeline WORK --full --size 128 --assets <hallo_original.py --full folder>``: the same run at MEMO's
   published shapes (``memo_pipeline.FULL_SIZES``: SD1.5 UNets, 768-wide tokens, the projections' class defaults); the
   four folders (10.3 GB) are written to ``OUT/checkpoint`` and kept for ``EMO_PARITY_FULL_DIR=OUT pytest
   tests/test_parity_memo.py -k full``; the assets folder's wav2vec2 and VAE are used.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import digest, hashed_state_dict, package_versions, stub_xformers

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--memo-src", required=True, help="checkout of memoavatar/memo at the pinned commit")
p.add_argument("--out", required=True, help="fixture folder (tests/parity/memo)")
p.add_argument("--seed", type=int, default=11, help="weights / inputs seed")
p.add_argument("--pipeline", metavar="WORK", help="also run MEMO's inference.py on tiny models in this scratch folder")
p.add_argument("--hallo-fixture", "--assets", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
               "tests", "parity", "hallo"), help="folder with the vae/ and wav2vec2/ reused by --pipeline (default: the tiny "
               "Hallo fixture's; with --full: a folder written by hallo_original.py --full)")
p.add_argument("--full", action="store_true",
               help="--pipeline at MEMO's published shapes (SD1.5 UNets, 768-wide tokens, wav2vec2-base-sized audio; "
                    "~10 GB of safetensors written to OUT/checkpoint; ~12.5 GB RAM); use --size 128 and "
                    "--assets <hallo_original.py --full folder>")
p.add_argument("--size", type=int, default=None, help="--pipeline pixels (height = width; default 64)")
p.add_argument("--frames", type=int, default=None, help="--pipeline frames per clip (default 4; MEMO: 16)")
p.add_argument("--past", type=int, default=None, help="--pipeline past frames (default 4; MEMO: 16)")
p.add_argument("--steps", type=int, default=None, help="--pipeline FlowMatch Euler steps (default 3; MEMO: 20)")
p.add_argument("--clips", type=int, default=None, help="--pipeline clips (default 2; the CI fixture: 3)")
p.add_argument("--cfg", type=float, default=None, help="--pipeline guidance scale (default 3.5, MEMO's; the CI fixture: 4.5)")
p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
               help="--pipeline weight_dtype (MEMO's inference.yaml: bf16); other than fp32 writes the pipeline stages only "
                    "(no modules.safetensors: the module comparison is fp32)")
args = p.parse_args()
if args.full and not args.pipeline:
    p.error("--full is a mode of --pipeline: give --pipeline WORK too")
if args.dtype != "fp32" and not args.pipeline:
    p.error("--dtype is a mode of --pipeline: give --pipeline WORK too")
MODULES = args.dtype == "fp32"  # parts 1 and 2 (fp32 module comparison); a half-precision fixture holds the pipeline only
if args.full:
    w2v_config = os.path.join(args.hallo_fixture, "wav2vec2", "config.json")
    w2v = {}
    if os.path.isfile(w2v_config):
        with open(w2v_config) as fh:
            w2v = json.load(fh)
    if (w2v.get("num_hidden_layers"), w2v.get("hidden_size")) != (12, 768):  # what MEMO's audio_proj defaults read
        p.error("--full needs --assets: a folder written by hallo_original.py --full (a wav2vec2-base-sized wav2vec2/, vae/)")
os.makedirs(args.out, exist_ok=True)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

stub_xformers()  # memo/models/motion_module.py imports xformers at module level
MEMO = os.path.abspath(args.memo_src)
sys.path.insert(0, MEMO)
from memo.models.motion_module import MemoryLinearAttention, MemoryLinearAttnTemporalModule
from memo.models.transformer_3d import Transformer3DModel

g = torch.Generator().manual_seed(args.seed)
rec: dict[str, torch.Tensor] = {}
weights: dict[str, dict] = {}


def hashed(name: str, module: torch.nn.Module, seed: int) -> None:
    spec = [(k, list(v.shape)) for k, v in module.state_dict().items()]
    state = hashed_state_dict(spec, seed)
    module.load_state_dict(state, strict=True)
    module.eval()
    weights[name] = {"seed": seed, "digest": digest(state), "spec": spec}


# ---- 1. memory-guided linear-attention temporal module ----------------------------------------------------
C, HEADS, BLOCKS, MAX_LEN, DECAY = 64, 4, 2, 32, 0.9
B, F, N, H, W = 2, 4, 3, 3, 2
CLIPS, STEPS = 3, 2
temporal = MemoryLinearAttnTemporalModule(
    in_channels=C,
    num_attention_heads=HEADS,
    num_transformer_block=BLOCKS,
    attention_block_types=("Temporal_Self", "Temporal_Self"),
    temporal_position_encoding=True,
    temporal_position_encoding_max_len=MAX_LEN,
)
for m in temporal.modules():
    if isinstance(m, MemoryLinearAttention):
        m.set_use_memory_efficient_attention_xformers(False)  # -> MemoryLinearAttnProcessor, as inference.py's call
hashed("temporal", temporal, args.seed)
decays = {type(m.processor).__name__: m.processor.decay for m in temporal.modules() if isinstance(m, MemoryLinearAttention)}
assert decays == {"MemoryLinearAttnProcessor": DECAY}, decays

with torch.no_grad():
    for clip in range(CLIPS if MODULES else 0):
        past = torch.randn(B, C, N, H, W, generator=g)  # MEMO's layout: b c f h w
        rec[f"temporal.clip{clip}.past"] = past
        for step in range(STEPS):
            x = torch.randn(B, C, F, H, W, generator=g)
            rec[f"temporal.clip{clip}.step{step}.x"] = x
            y = temporal(x, past, None, is_new_audio=clip == 0, update_past_memory=step == 0)
            rec[f"temporal.clip{clip}.step{step}.out"] = y

# ---- 2. emotion-conditioned joint audio modules -----------------------------------------------------------
AC, AHEADS, AHEAD_DIM, ADIM, TOKENS, AF, AH, AW, CLASSES = 64, 2, 16, 24, 5, 3, 4, 3, 9
audio_kwargs = {
    "num_attention_heads": AHEADS, "attention_head_dim": AHEAD_DIM, "in_channels": AC, "num_layers": 1,
    "cross_attention_dim": ADIM, "norm_num_groups": 32, "use_audio_module": True, "depth": 0, "unet_block_name": "down",
    "emo_drop_rate": 0.05,
}
audio_a = Transformer3DModel(**audio_kwargs, is_final_block=False)
audio_b = Transformer3DModel(**audio_kwargs, is_final_block=True)
hashed("audio_a", audio_a, args.seed + 1)
hashed("audio_b", audio_b, args.seed + 2)

with torch.no_grad():
    tokens = torch.randn(B, AF, TOKENS, ADIM, generator=g)  # bs f margin dim, as audio_proj hands it on
    rec["audio.tokens"] = tokens
    for case, labels in enumerate(([CLASSES, 4], [CLASSES, 0]) if MODULES else ()):
        emotion = torch.tensor(labels, dtype=torch.int32)  # the pipeline's dtype (torch.int)
        xa = torch.randn(B, AC, AF, AH, AW, generator=g)
        xb = torch.randn(B, AC, AF, AH, AW, generator=g)
        ya, audio_out = audio_a(xa, None, encoder_hidden_states=tokens, emotion=emotion, return_dict=False)
        yb, audio_none = audio_b(xb, None, encoder_hidden_states=audio_out, emotion=emotion, return_dict=False)
        assert audio_none is None
        rec[f"audio.case{case}.emotion"] = emotion
        rec[f"audio.case{case}.a.x"], rec[f"audio.case{case}.a.out"], rec[f"audio.case{case}.a.audio_out"] = xa, ya, audio_out
        rec[f"audio.case{case}.b.x"], rec[f"audio.case{case}.b.out"] = xb, yb

rec = {k: v.contiguous() for k, v in rec.items()}
if MODULES:
    save_file(rec, os.path.join(args.out, "modules.safetensors"))
else:  # only the pipeline's stages in a half-precision fixture
    rec.clear()
    weights.clear()
pipeline_meta = None
if args.pipeline:
    from memo_pipeline import run_pipeline  # tools/parity/memo_pipeline.py (part 3)

    pipeline_meta = run_pipeline(MEMO, os.path.abspath(args.pipeline), os.path.abspath(args.hallo_fixture), args.out, args.seed,
                                 full=args.full, size=args.size, frames=args.frames, past=args.past, steps=args.steps,
                                 clips=args.clips, cfg=args.cfg, dtype=args.dtype)
meta = {
    "original": {"repo": "https://github.com/memoavatar/memo",
                 "commit": os.popen(f"git -C {shlex.quote(MEMO)} rev-parse HEAD 2>/dev/null").read().strip() or "unknown"},
    "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    "packages": package_versions("torch", "diffusers", "transformers", "numpy", "einops"),
    "stubbed_packages": ["xformers"],
    "temporal": {"class": "memo.models.motion_module.MemoryLinearAttnTemporalModule + MemoryLinearAttnProcessor",
                 "channels": C, "heads": HEADS, "blocks": BLOCKS, "max_len": MAX_LEN, "decay": DECAY,
                 "videos": B, "frames": F, "past_frames": N, "height": H, "width": W, "clips": CLIPS, "steps": STEPS,
                 "flags": "is_new_audio = clip == 0, update_past_memory = step == 0 (video_pipeline.py)"},
    "audio": {"class": "memo.models.transformer_3d.Transformer3DModel(use_audio_module=True)",
              "channels": AC, "heads": AHEADS, "head_dim": AHEAD_DIM, "audio_dim": ADIM, "tokens": TOKENS,
              "videos": B, "frames": AF, "height": AH, "width": AW, "emotion_classes": CLASSES,
              "cases": [[CLASSES, 4], [CLASSES, 0]],
              "modules": {"audio_a": "is_final_block=False", "audio_b": "is_final_block=True (fed audio_a's audio)"}},
    "weights": {"generator": "common.hashed_state_dict", **weights},
    "records": {k: list(v.shape) for k, v in rec.items()},
}
if not MODULES:
    for key in ("temporal", "audio", "weights", "records"):
        del meta[key]
if pipeline_meta is not None:
    meta["pipeline"] = pipeline_meta
with open(os.path.join(args.out, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print(f"wrote {len(rec)} module tensors{' and the pipeline stages' if args.pipeline else ''} to {args.out}")
