"""``python -m emo_model generate``: portrait + audio -> mp4 (or webm) with sound.

With no ``--model`` it runs the built-in CPU demo (the tiny model, sample portrait and sample audio
shipped in ``emo_model/demo_assets``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ... import validation
from ...families import FAMILIES, emotion_names, supported_files
from ...sampling.schedulers import FLOW_SAMPLERS, SAMPLERS
from ..keypoint_input import MODES

FRAMES = ("auto", "full", "crop")
DEFAULT_OUT = "emo_output.mp4"
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", help="portrait image (png/jpg/webp); default: the demo portrait")
    p.add_argument("--audio", help="speech or song (wav/flac/mp3/ogg/m4a, or a video's audio track); default: the demo clip")
    p.add_argument("--out",
                   help=f"output video file (.mp4 or .webm; its folder must exist; a folder is refused; an existing file only with "
                   f"--force; never one of the inputs) [{DEFAULT_OUT}, or {DEFAULT_OUT.replace('.mp4', '_2.mp4')} and on when it "
                   f"exists: a rerun never replaces an earlier video unasked]")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists (a failed run still leaves it as it was)")
    p.add_argument("--model", help="EMO-family checkpoint: " + supported_files() + "; default: the demo model")
    p.add_argument("--family", choices=[fam.name for fam in FAMILIES],
                   help="the model's family when its tensors alone cannot say (families that share a network); default: detected")
    p.add_argument("--vae", help="VAE: diffusers folder or vae-ft-mse-840000-ema-pruned.safetensors (not needed for the demo model)")
    p.add_argument("--audio-encoder", help="wav2vec2-base-960h (folder or .safetensors) or whisper_tiny.pt, as the model's family needs")
    p.add_argument("--models-dir", help="folder with optional extras (YuNet face detector, insightface models)")
    p.add_argument("--steps", type=int, help="denoising steps, 1-1000 (default: the model's preset)")
    p.add_argument("--cfg", type=float, help="guidance scale (reference; classic CFG when --audio-cfg is not given)")
    p.add_argument("--audio-cfg", type=float, help="separate audio guidance scale")
    p.add_argument("--seed", type=int, default=0, help="random seed [%(default)s]")
    p.add_argument("--fps", type=float, help="video frame rate, 1-120 (omit it for the model's preset)")
    p.add_argument("--speed", type=float, help="head-motion speed, deg/frame (speech 0.1-1.0, singing 1.0-1.3)")
    p.add_argument("--size", type=int, help="output size in pixels, a multiple of 64 (default: the model's preset)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS) + sorted(FLOW_SAMPLERS),
                   help="scheduler (default: the model's preset; flow-velocity models take " + ", ".join(FLOW_SAMPLERS) + ")")
    p.add_argument("--emotion", help="emotion of models with emotion-conditioned audio modules: auto (classified from the audio by "
                   "the family's audio-emotion classifier, whose files must be in the model folder), or a class for the whole video: "
                   + ", ".join(emotion_names()) + " (or a class index); default: auto when the classifier's files are there, "
                   "else the model's preset")
    p.add_argument("--pose", help="pose-guided models only: a folder of the original's pose templates (0.npy, 1.npy, ..; "
                   "e.g. its assets/halfbody_demo/pose/01), or 'sway' (the built-in idle sway, the default); a sequence "
                   "shorter than the audio is mirrored back and forth")
    keypointed = ", ".join(f.label for f in FAMILIES if f.keypoint_guide is not None)
    p.add_argument("--keypoints", help=f"keypoint-guided models only ({keypointed}): the driving face keypoints: a driving video, a "
                   "folder of its frames (our face keypoints on every frame), or a keypoint file (.npy [frames, 3, 2] pixels at the "
                   "model size, or the original's kps.pth); cut and stretched to the video's frames. Default: none (the portrait's "
                   "own keypoints on every frame)")
    p.add_argument("--retarget", choices=MODES, default="auto",
                   help=f"keypoint-guided models only ({keypointed}): how the driving keypoints move the portrait's: fix_face (the "
                   "portrait's keypoints on every frame), no_retarget (the driving ones as they are: a video of the same person, "
                   "framed alike), offset_retarget (the portrait's, moved by half the driving nose's motion), naive_retarget (the "
                   "driving ones rescaled to the portrait's face); auto: fix_face without --keypoints (the original's default), "
                   "offset_retarget with them [%(default)s]")
    p.add_argument(
        "--fast",
        action="store_true",
        help="fast mode: less denoiser work (DPM++ 2M at 0.4x the preset's steps, deep features reused every other step); "
        "--steps/--sampler still override. Measured cost in docs/performance.md",
    )
    p.add_argument("--frames-per-clip", type=int, help="frames generated per clip / context window")
    p.add_argument("--motion-frames", type=int, help="frames of the previous clip that condition the next")
    p.add_argument("--colour-match", choices=["none", "mean", "reinhard"], default="none", help="match each clip's colours to the portrait")
    p.add_argument("--loudness", type=float, help="normalise the audio to this loudness in LUFS (e.g. -23)")
    p.add_argument("--face-detector", default="auto", help="auto, haar, yunet or mediapipe")
    p.add_argument("--face-index", type=int, default=0,
                   help="which face when the picture has several: 0 = the largest, then by decreasing area [%(default)s]")
    p.add_argument("--frame", choices=FRAMES, default="auto",
                   help="full: the video at the picture's own size, the animated face pasted back into it (even sides, at most "
                   "4096 px); crop: the square face crop at the model size; auto: full for a picture that is not square, crop for "
                   "a square one [%(default)s]")
    p.add_argument("--crf", type=int, help="video quality (lower is better; default 19)")
    p.add_argument(
        "--max-frames",
        type=int,
        default=validation.DEFAULT_MAX_FRAMES,
        help="refuse runs of more video frames than this (a guard against hours of work by mistake) [%(default)s]",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto [%(default)s]")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto", help="weights dtype (auto: fp16/bf16 on GPU, fp32 on CPU)")


def pick_device(name: str) -> torch.device:
    return validation.pick_device(name, label="--device")


# flag spelling of each sampling value, for the one-line errors
FLAGS = {
    "steps": "--steps", "cfg": "--cfg", "audio_cfg": "--audio-cfg", "fps": "--fps", "speed": "--speed",
    "frames_per_clip": "--frames-per-clip", "motion_frames": "--motion-frames", "seed": "--seed", "size": "--size",
    "loudness": "--loudness", "max_frames": "--max-frames",
}


def check_arguments(args: argparse.Namespace) -> tuple[Path, str]:
    """Every flag against the shared rules, and the output path, before any model work; (out, format)."""
    for name, flag in FLAGS.items():
        validation.check_optional(name, getattr(args, name), label=flag)
    inputs = {"--image": args.image, "--audio": args.audio, "--model": args.model, "--vae": args.vae, "--audio-encoder": args.audio_encoder}
    if args.out is None:  # no --out: the default name, or the next free one (`make demo` twice keeps both videos)
        args.out = free_default_out(Path.cwd(), force=args.force)
    # the output's shape first, then the inputs, then whether --out is one of them (by any name), then --force
    validation.check_output_path(args.out, label="--out")
    for flag, path in inputs.items():
        validation.check_input_path(path, label=flag, kind="file" if flag in ("--image", "--audio") else "file or folder")
    validation.check_not_an_input(Path(args.out), inputs, label="--out")
    out, fmt = validation.check_output_path(args.out, label="--out", overwrite=args.force, overwrite_flag="--force")
    if args.crf is not None:
        from ...video_io import FORMATS

        lo, hi = FORMATS[fmt].crf_range
        validation.check("crf", args.crf, label="--crf", rule=validation.Rule(lo, hi, integer=True, hint=f"{fmt}: lower is better, 17-23 typical"))
    validation.check_input_path(args.models_dir, label="--models-dir", kind="folder")
    from ...face import DETECTORS

    validation.check_choice(args.face_detector, DETECTORS, label="--face-detector")
    validation.check_input_path(args.keypoints, label="--keypoints", kind="file or folder")
    if args.retarget not in ("auto", "fix_face") and not args.keypoints:
        raise validation.InputError(f"--retarget {args.retarget} needs driving keypoints: give --keypoints (a driving video, a folder "
                                    "of its frames or a keypoint file), or use --retarget fix_face")
    validation.check("face_index", args.face_index, label="--face-index")
    return out, fmt


def free_default_out(folder: Path, *, force: bool) -> str:
    """``emo_output.mp4`` when it is free (or --force replaces it), else the first free ``emo_output_N.mp4``, N >= 2."""
    stem, suffix = DEFAULT_OUT.rsplit(".", 1)
    if force or not (folder / DEFAULT_OUT).exists():
        return DEFAULT_OUT
    n = 2
    while (folder / f"{stem}_{n}.{suffix}").exists():
        n += 1
    name = f"{stem}_{n}.{suffix}"
    print(f"note: {DEFAULT_OUT} exists and is kept; writing {name} (--out names the file, --force replaces {DEFAULT_OUT})", file=sys.stderr)
    return name


def pick_frame(frame: str, image: np.ndarray) -> str:
    """--frame auto: full for a picture that is not square (a wide or tall scene), crop for a square portrait."""
    if frame != "auto":
        return frame
    return "crop" if image.shape[0] == image.shape[1] else "full"


def full_frame_note(path: str, image: np.ndarray) -> str:
    """The size of the full-frame video, and the cap when the picture file was larger (read_portrait downscaled it)."""
    from PIL import Image

    from ...face.paste_back import MAX_SIDE, even_size

    h, w = even_size(*image.shape[:2])
    note = f"full-frame video {w}x{h}: the animated face is pasted back into the picture (--frame crop for the square crop)"
    try:
        with Image.open(path) as img:
            fw, fh = img.size
    except OSError:
        return note
    if max(fw, fh) > MAX_SIDE:
        note += f"; the picture is {fw}x{fh}, above the {MAX_SIDE} px cap, so it was downscaled"
    return note


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if DTYPES[name] is not None:
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def read_image(path: str) -> np.ndarray:
    """The portrait, upright (EXIF orientation applied, as ComfyUI's Load Image does), size-limited."""
    from ...video_io.image_io import read_portrait

    return read_portrait(path)


def check_guide_options(args: argparse.Namespace, config) -> None:
    """--keypoints / --retarget only for a keypoint-guided model, --pose not for one (right after loading: one line)."""
    from ..keypoint_input import keypoint_guide

    if keypoint_guide(config) is None:
        if args.keypoints or args.retarget != "auto":
            flag = "--keypoints" if args.keypoints else "--retarget"
            raise validation.InputError(f"{flag}: this model reads no face keypoints (only keypoint-guided models do); leave {flag} out")
    elif args.pose:
        raise validation.InputError("--pose: this model reads face keypoints, not poses; give the driving video as --keypoints")


def guide_frames(args: argparse.Namespace, session, reference, audio, model_path: str):
    """(the pose / keypoint images the model's guider reads, or None; a note): keypoint images for a keypoint-guided
    family (--keypoints, --retarget), pose images for a pose-guided one (--pose)."""
    from ..keypoint_input import keypoint_frames_for, keypoint_guide
    from ..pose_input import pose_frames_for

    check_guide_options(args, session.config)
    if keypoint_guide(session.config) is None:
        return pose_frames_for(session.config, args.pose, audio.num_frames, reference.size[0], audio.fps, label="--pose")
    # insightface's pack may sit in --models-dir, or beside the model folder (the original's model_ckpts/insightface_models)
    folders = [d for d in (args.models_dir, str(Path(model_path).expanduser().resolve().parent)) if d]
    return keypoint_frames_for(session.config, reference.image, args.keypoints, args.retarget, audio.num_frames,
                               detector=args.face_detector, models_dirs=folders, label="--keypoints", mode_label="--retarget")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ... import demo
    from ...sampling.median_filter import MedianFilter
    from ...sampling.settings import fast_settings
    from ...video_io import VideoWriter
    from ..session import Session

    out, fmt = check_arguments(args)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    model_path = args.model or str(demo.model_path())
    image_path = args.image or (str(demo.portrait_path()) if not args.model else None)
    audio_path = args.audio or (str(demo.audio_path()) if not args.model else None)
    if image_path is None or audio_path is None:
        raise validation.InputError("--image and --audio are required with --model; give both (or drop --model for the demo)")
    image = read_image(image_path)  # before the model: a bad image costs nothing

    t0 = time.perf_counter()
    with validation.user_input():  # one line from the CLI, the traceback with --debug
        session = Session.load(model_path, vae=args.vae, audio_encoder=args.audio_encoder, device=device, dtype=dtype,
                               family=args.family)
    with validation.user_input():  # a class the model lacks, or 'auto' without the classifier's files: before the audio
        session.check_emotion(args.emotion, label="--emotion")
        check_guide_options(args, session.config)
    fast = fast_settings(session.config.preset) if args.fast else {}
    settings = session.settings(
        **{k: v for k, v in fast.items() if k not in ("steps", "sampler")},
        steps=args.steps if args.steps is not None else fast.get("steps"),
        cfg=args.cfg,
        audio_cfg=args.audio_cfg if args.audio_cfg is not None else args.cfg,
        sampler=args.sampler or fast.get("sampler"),
        seed=args.seed,
        speed=args.speed,
        frames_per_clip=args.frames_per_clip,
        motion_frames=args.motion_frames,
        colour_match=args.colour_match,
        labels={**FLAGS, "sampler": "--sampler", "emotion": "--emotion"},
    )
    audio = session.encode_audio(  # an AudioError is one line from the CLI, the traceback with --debug
        audio_path, fps=args.fps, loudness_lufs=args.loudness, max_frames=args.max_frames, max_frames_label="--max-frames"
    )
    if audio.note:  # the audio front end's one line (e.g. the vocal separator's file is missing)
        print(f"note: {audio.note}", file=sys.stderr)
    emotion_bar = []  # a progress bar while the audio's emotion is classified (only when it is)

    def classifying(done: int, total: int) -> None:
        if not emotion_bar:
            emotion_bar.append(tqdm(total=total, unit="window", desc="emotion", dynamic_ncols=True))
        emotion_bar[0].update(done - emotion_bar[0].n)

    try:
        with validation.user_input():
            emotion, emotion_note = session.resolve_emotion(args.emotion, audio, on_progress=classifying)  # 'auto' / the preset: from the audio
    finally:
        for b in emotion_bar:
            b.close()
    if emotion_note:
        print(f"note: {emotion_note}", file=sys.stderr)
    if emotion is not None:
        settings = dataclasses.replace(settings, emotion=emotion)
    portrait = session.prepare_portrait(image, size=args.size, detector=args.face_detector, models_dir=args.models_dir,
                                        face_index=args.face_index)
    if portrait.warning:
        print(f"warning: {portrait.warning}", file=sys.stderr)
    if portrait.front_end:  # which face preprocessing ran: the family's original's, or ours and why
        print(f"note: {portrait.front_end}", file=sys.stderr)
    paste = None
    if pick_frame(args.frame, image) == "full":
        from ...face.paste_back import CropPlacement, PasteBack

        paste = PasteBack(image, CropPlacement.from_crop(portrait))
        print(f"note: {full_frame_note(image_path, image)}", file=sys.stderr)
    from ...demo.config import NAME as DEMO_NAME

    if session.config.name == DEMO_NAME:  # the toy says what it is when given someone's photo
        from ...demo.portrait_check import portrait_notice

        notice = portrait_notice(portrait.image)
        if notice:
            print(f"note: {notice}", file=sys.stderr)
    identity = portrait.original_picture if portrait.original_picture is not None else portrait.image  # as the original embeds
    reference = session.encode_reference(portrait.image, size=args.size, identity_image=identity, models_dir=args.models_dir)
    region_masks = session.region_masks(portrait)
    if region_masks is not None and portrait.region_masks is None:
        print("note: audio region masks (full / face / lips) made from the face box of the portrait crop", file=sys.stderr)
    with validation.user_input():
        pose_frames, pose_note = guide_frames(args, session, reference, audio, model_path)
    if pose_note:
        print(f"note: {pose_note}", file=sys.stderr)
    total = settings.steps * session.count_units(audio.num_frames, settings)
    bar = tqdm(total=total, unit="step", desc="EMO", dynamic_ncols=True)
    try:  # the writer removes its partial file on any error: no half-written video
        with VideoWriter(out, audio.fps, format=fmt, crf=args.crf, audio=audio.audio.as_comfy()) as writer:
            sink = writer.write
            if paste is not None:  # full-size frames go to the writer one by one: memory does not grow with length

                def sink(frames):
                    for frame in paste.iter_composite(frames, dtype=np.uint8):
                        writer.write(frame)

            median = session.config.preset.quirks.output_median_filter
            smoothing = MedianFilter(median, sink) if median else None  # the original's filter of the written frames
            session.pipeline.generate(
                reference,
                audio.features,
                num_frames=audio.num_frames,
                settings=settings,
                sink=sink if smoothing is None else smoothing.push,
                face_mask=torch.from_numpy(portrait.mask),
                region_masks=region_masks,
                on_step=lambda info: bar.update(1),
                pose_frames=pose_frames,
            )
            if smoothing is not None:
                smoothing.close()
    finally:
        bar.close()  # an error line then starts on its own line
    elapsed = time.perf_counter() - t0
    print(f"wrote {out} ({audio.num_frames} frames at {audio.fps:g} fps, {audio.audio.duration:.2f} s) in {elapsed:.1f} s")
    return 0
