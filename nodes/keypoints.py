"""EMO Face Keypoints: a driving video's frames (or a DWPose result) -> face keypoints for a keypoint-guided model."""

from __future__ import annotations

import logging

from ..emo_model.face import DETECTORS
from ..emo_model.face.keypoint_detection import frame_keypoints, source_note
from ..emo_model.face.keypoint_images import RETARGET_MODES
from ..emo_model.families import FAMILIES
from ..emo_model.validation import InputError
from . import _comfy

log = logging.getLogger("ComfyUI-EMO")
NOSE, RIGHT_EYE, LEFT_EYE = 0, 14, 15  # OpenPose body points (COCO 18); the subject's right eye is on the image's left


def keypoint_families() -> str:
    return ", ".join(f.label for f in FAMILIES if f.keypoint_guide is not None)


def pose_keypoint(points, width: int, height: int, mode: str) -> list[dict]:
    """[N, 3, 2] pixels (image-left eye, image-right eye, nose) -> POSE_KEYPOINT (OpenPose body points 14, 15, 0 set),
    each frame naming the retarget mode in ``emo_retarget``."""
    frames = []
    for p in points:
        body = [0.0] * (18 * 3)
        for index, (x, y) in zip((RIGHT_EYE, LEFT_EYE, NOSE), p):
            body[3 * index : 3 * index + 3] = [float(x), float(y), 1.0]
        frames.append({"people": [{"pose_keypoints_2d": body}], "canvas_width": int(width), "canvas_height": int(height),
                       "emo_retarget": mode})
    return frames


class EMOFaceKeypoints:
    DESCRIPTION = (
        "Face keypoints (eyes and nose) of a driving video for keypoint-guided models (" + keypoint_families() + "), and how "
        "they move the portrait's (retarget). Wire the video's frames (our face detector runs on every frame) or a DWPose "
        "Estimator's POSE_KEYPOINT, and the output into EMO Sampler's pose. Without it the portrait's own keypoints are used "
        "on every frame (fix_face, the original's default)."
    )
    CATEGORY = "EMO"
    FUNCTION = "run"
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("keypoints",)
    OUTPUT_TOOLTIPS = ("The driving face keypoints (OpenPose body points: eyes, nose) with the retarget mode: into EMO Sampler's pose.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "retarget": (list(RETARGET_MODES), {"default": "offset_retarget", "tooltip": "How the driving keypoints move the portrait's (the original's retarget strategies). offset_retarget: the portrait's keypoints moved by half the driving nose's motion (a video of another person). no_retarget: the driving keypoints as they are (a video of the same person, framed as the portrait). naive_retarget: the driving keypoints rescaled to the portrait's face proportions. fix_face: the portrait's keypoints on every frame (the driving video unused)."}),
                "detector": (list(DETECTORS), {"default": "auto", "tooltip": "Face detector for the frames. Keypoints come from insightface when it is installed with its buffalo_l folder in models/insightface/models (as the original), else from YuNet's landmarks (its file in models/emo/face), else they are placed in the detected face box."}),
            },
            "optional": {
                "frames": ("IMAGE", {"tooltip": "The driving video's frames (e.g. from Load Video): the face keypoints are found on every frame; a frame without a face keeps the previous one's. Square frames framed like the portrait work best (the centred square of other shapes is used)."}),
                "pose": ("POSE_KEYPOINT", {"tooltip": "Or a DWPose / OpenPose Estimator's output on the driving video (body keypoints on): its eyes and nose are used. Ignored when frames are wired."}),
            },
        }

    def run(self, retarget, detector, frames=None, pose=None):
        if retarget not in RETARGET_MODES:
            raise InputError(f"retarget must be one of {', '.join(RETARGET_MODES)}, got {retarget!r}")
        if frames is None and not pose:
            raise InputError("EMO Face Keypoints needs the driving video: wire its frames or a DWPose POSE_KEYPOINT "
                             "(without a driving video, leave EMO Sampler's pose unwired: the portrait's keypoints, fix_face)")
        if frames is None:  # DWPose's result as it is, naming the mode
            frames_in = [pose] if isinstance(pose, dict) else list(pose)
            out = [{**f, "emo_retarget": retarget} for f in frames_in]
            summary = f"{len(out)} frames of POSE_KEYPOINT · {retarget}"
            return {"ui": {"emo_summary": [summary]}, "result": (out,)}
        images = _comfy.image_batch(frames, label="frames")
        h, w = images.shape[1:3]
        folders = [str(_comfy.models_dir()), str(_comfy.models_dir() / "emo" / "face")]
        try:
            points, source, misses = frame_keypoints(list(images.numpy()), detector=detector, models_dirs=folders)
        except ValueError as exc:  # FaceError: no face in any frame
            raise InputError(f"frames: {exc}") from None
        by = {"insightface": "insightface", "yunet": "YuNet's landmarks", "box": "the face box"}.get(source, source)
        summary = f"{len(points)} frames · {retarget} · keypoints by {by}"  # short on the page; the log says what would be the original's
        if source != "insightface":
            log.info("EMO Face Keypoints: %s", source_note(source))
        if misses:
            summary += f" · no face in {misses} frame(s): they keep the previous keypoints"
            log.warning("EMO Face Keypoints: no face in %d of %d frames; they keep the previous frame's keypoints", misses, len(points))
        return {"ui": {"emo_summary": [summary]}, "result": (pose_keypoint(points, w, h, retarget),)}

