"""The EMO networks in ComfyUI's memory manager: one ModelPatcher, loaded with a working-memory estimate.

Without ComfyUI a fake ``model_management`` records the calls. With a ComfyUI checkout
(``COMFYUI_DIR=/path/to/ComfyUI``; ``COMFYUI_PYTHON``: a Python with its dependencies, default this one) the last test drives the real
``comfy.model_management`` in a subprocess: the demo model is registered when a node runs, "Unload
models" (``unload_all_models``, what the server's /free endpoint calls) removes it, and the next node
call loads it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from comfy_harness import load_pack
from conftest import HANG_GUARD_S, ROOT

from emo_model.sampling.memory import MIB, guidance_branches, settings_memory_bytes, working_memory_bytes

DEMO = ROOT / "emo_model" / "demo_assets" / "emo-tiny-demo.safetensors"


def test_guidance_branches_follow_the_weights_that_are_run():
    assert guidance_branches(1.0, 1.0) == 1  # no guidance: the full branch only
    assert guidance_branches(3.5, 3.5) == 2  # classic CFG
    assert guidance_branches(3.5, 2.0) == 3  # separate reference and audio guidance


def test_working_memory_grows_with_branches_frames_and_size():
    base = {"size": 512, "frames_per_clip": 16, "motion_frames": 2, "dtype_bytes": 2}
    one, three = working_memory_bytes(branches=1, **base), working_memory_bytes(branches=3, **base)
    assert 2.0 < three / one <= 3.0  # the denoiser part is per branch; the bank and decoding are not
    assert working_memory_bytes(branches=2, **{**base, "size": 256}) < working_memory_bytes(branches=2, **base) / 3
    assert abs(working_memory_bytes(branches=2, **{**base, "dtype_bytes": 4}) - 2 * working_memory_bytes(branches=2, **base)) <= 2
    # Hallo's preset at 512 px in fp16: a few GiB (ComfyUI budgets ~2.9 GiB for an SD1.5 batch of 36 at 512 px)
    hallo = working_memory_bytes(branches=2, **base)
    assert 3 * 1024 * MIB < hallo < 8 * 1024 * MIB
    # the demo (64 px, 8 + 2 frames) needs a few MiB
    assert working_memory_bytes(size=64, frames_per_clip=8, motion_frames=2, branches=3, dtype_bytes=4) < 200 * MIB


def test_settings_memory_bytes_reads_the_sampling_settings():
    """Expected values worked out by hand from the module's documented formula (not from working_memory_bytes):
    512 px in fp16 -> a 64 x 64 latent; denoiser = branches x frames x 64 x 64 x 2 x 0.01 MiB x 1.5; bank = (1 + motion
    frames) x sum over the SD1.5 levels of (64 / down)^2 x channels x layers x K,V x 2 bytes = (1 + motion) x
    46,202,880; decode = 8 frames x 512 x 512 x 128 channels x 6 tensors x 2 bytes = 3,221,225,472."""
    from emo_model.sampling.settings import SamplingSettings

    s = SamplingSettings(frames_per_clip=12, motion_frames=4, cfg=3.5, audio_cfg=2.0)  # three branches, 16 frames
    # denoiser 3 x 16 x 4096 x 2 x 0.015 MiB = 6,184,752,906.24 > decode; + bank 5 x 46,202,880 = 231,014,400
    assert settings_memory_bytes(s, size=512, dtype_bytes=2) == 6_415_767_306
    # context windows: no motion frames (12 frames, bank x 1): 4,638,564,679.68 + 46,202,880
    s.strategy = "context_windows"
    assert settings_memory_bytes(s, size=512, dtype_bytes=2) == 4_684_767_559
    # no guidance, one branch: the denoiser's 2,061,584,302.08 is below the decoder's 3,221,225,472, which counts
    s.strategy, s.cfg, s.audio_cfg = "motion_frames", 1.0, 1.0
    assert settings_memory_bytes(s, size=512, dtype_bytes=2) == 3_221_225_472 + 231_014_400


class FakeModelManagement:
    def __init__(self):
        self.calls = []

    def get_torch_device(self):
        return torch.device("cpu")

    def unet_offload_device(self):
        return torch.device("cpu")

    def load_models_gpu(self, models, memory_required=0, force_full_load=False, **kw):
        self.calls.append((models, memory_required, force_full_load))

    def soft_empty_cache(self):
        pass


class FakePatcher:
    def __init__(self, model, load_device, offload_device, size=0):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device


@pytest.fixture
def fake_comfy(monkeypatch):
    pack = load_pack()
    comfy = sys.modules[f"{pack.__name__}.nodes._comfy"]
    mm = FakeModelManagement()
    monkeypatch.setattr(comfy, "model_management", mm)
    package, patcher_module = types.ModuleType("comfy"), types.ModuleType("comfy.model_patcher")
    patcher_module.ModelPatcher = FakePatcher
    package.model_patcher = patcher_module
    monkeypatch.setitem(sys.modules, "comfy", package)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", patcher_module)
    return comfy, mm


@pytest.mark.skipif(not DEMO.is_file(), reason="the demo model is not built")
def test_running_on_registers_one_patcher_per_model_and_leaves_unloading_to_comfyui(fake_comfy):
    from emo_model.app.session import Session

    comfy, mm = fake_comfy
    session = Session.load(DEMO)
    moved = []
    session.to = lambda device: moved.append(device)  # ComfyUI moves the weights, not the node
    with comfy.running_on(session, memory_required=123) as s:
        assert s is session
    (models, memory, full), = mm.calls
    patcher = models[0]
    assert memory == 123 and full is True
    modules = dict(patcher.model.named_children())
    assert modules["emo"] is session.model and modules["vae"] is session.codec.vae
    assert moved == []  # nothing moved back after the block: ComfyUI keeps or unloads it
    twin = type(session)(session.model, session.codec, session.audio_encoder, session.device, session.name, session.info)
    with comfy.running_on(twin):
        pass
    assert mm.calls[1][0][0] is patcher  # a session sharing the model shares its patcher


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="set COMFYUI_DIR to a ComfyUI checkout to run against its model_management")
@pytest.mark.skipif(not DEMO.is_file(), reason="the demo model is not built")
def test_real_model_management_loads_unloads_and_reloads_the_demo(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{os.environ["COMFYUI_DIR"]!r}, {str(ROOT / "tests")!r}]
        from comfy.cli_args import args
        args.cpu = True
        import comfy.model_management as mm
        from comfy_harness import load_pack
        pack = load_pack()
        nodes = pack.NODE_CLASS_MAPPINGS
        comfy = sys.modules[pack.__name__ + ".nodes._comfy"]
        assert comfy.model_management is mm, "the pack did not pick up ComfyUI"
        session = nodes["LoadEMOModel"]().load("emo-tiny-demo (built in, CPU)", "(bundled with the model / not needed)",
                                              "(none: log-mel demo, or use a core AUDIO_ENCODER_OUTPUT)", "fp32", "standard")["result"][0]
        portrait, audio = nodes["EMODemoSample"]().load()

        def loaded():
            return [m for m in mm.current_loaded_models if m.model is session.model.__dict__.get("_emo_comfy_patcher")]

        assert not loaded()
        nodes["EMOReferenceEncode"]().encode(session, portrait)
        assert len(loaded()) == 1, "not registered with model_management"
        mm.unload_all_models()  # what "Unload models" (POST /free) does
        assert not loaded(), "still loaded after unload_all_models"
        nodes["EMOAudioEncode"]().encode(session, audio, 0.0, "off")
        assert len(loaded()) == 1, "not loaded again by the next node"
        print("OK")
        """
    )
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)  # ComfyUI's Python, if it has its own venv
    proc = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
