"""Network shapes shared by the Hallo and Hallo2 harnesses (Hallo2's network classes are Hallo's): our
``tiny-hallo`` config, or (``--full``) Hallo's published ones, and the Stable-Diffusion UNet folder config that
Hallo's ``Net`` is built from."""

from __future__ import annotations

from types import SimpleNamespace


def net_sizes(full: bool) -> SimpleNamespace:
    """widths / heads / groups / cross-attention width / layers per block of the UNets, the audio and identity
    projections' sizes and the face locator's widths."""
    if full:
        return SimpleNamespace(widths=[320, 640, 1280, 1280], heads=8, groups=32, cross=768, layers=2, audio_layers=12,
                               audio_dim=768, id_dim=512, id_tokens=4, audio_tokens=32, audio_hidden=512,
                               fl_widths=(16, 32, 64, 128))
    return SimpleNamespace(widths=[32, 64, 64, 64], heads=2, groups=8, cross=32, layers=1, audio_layers=2, audio_dim=32,
                           id_dim=16, id_tokens=2, audio_tokens=4, audio_hidden=32, fl_widths=(8, 8, 16, 16))


def sd_unet_config(sizes: SimpleNamespace, sample_size: int) -> dict:
    """config.json of the SD1.5-style UNet folder (diffusers 0.27.2's UNet2DConditionModel) at these sizes."""
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.27.2", "act_fn": "silu",
        "attention_head_dim": sizes.heads, "block_out_channels": sizes.widths, "center_input_sample": False,
        "cross_attention_dim": sizes.cross, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": sizes.layers, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": sizes.groups,
        "out_channels": 4, "sample_size": sample_size, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    }
