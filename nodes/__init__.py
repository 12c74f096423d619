"""ComfyUI nodes: thin adapters between ComfyUI's types (IMAGE, AUDIO, MASK, VAE, VIDEO) and ``emo_model``."""

from .audio import EMOAudioEncode
from .demo import EMODemoSample
from .face import EMOFaceMask
from .keypoints import EMOFaceKeypoints
from .loader import LoadEMOModel
from .paste_back import EMOPasteBack
from .reference import EMOReferenceEncode
from .sampler import EMOSampler
from .video import EMOVideoCombine

NODE_CLASS_MAPPINGS = {
    "LoadEMOModel": LoadEMOModel,
    "EMOAudioEncode": EMOAudioEncode,
    "EMOFaceMask": EMOFaceMask,
    "EMOReferenceEncode": EMOReferenceEncode,
    "EMOSampler": EMOSampler,
    "EMOVideoCombine": EMOVideoCombine,
    "EMODemoSample": EMODemoSample,
    "EMOPasteBack": EMOPasteBack,
    "EMOFaceKeypoints": EMOFaceKeypoints,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadEMOModel": "Load EMO Model",
    "EMOAudioEncode": "EMO Audio Encode",
    "EMOFaceMask": "EMO Face Mask",
    "EMOReferenceEncode": "EMO Reference Encode",
    "EMOSampler": "EMO Sampler",
    "EMOVideoCombine": "EMO Video Combine",
    "EMODemoSample": "EMO Demo Sample",
    "EMOPasteBack": "EMO Paste Back",
    "EMOFaceKeypoints": "EMO Face Keypoints",
}
