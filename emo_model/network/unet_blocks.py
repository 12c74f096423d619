"""The SD1.5 UNet skeleton shared by the ReferenceNet and the backbone.

Both networks have SD1.5's shape and key names (``conv_in``, ``time_embedding``, ``down_blocks``,
``mid_block``, ``up_blocks``, ``conv_norm_out``, ``conv_out``); the backbone additionally has temporal
modules (``motion_modules``) at every level and, in the region-audio layout, ``audio_modules``.

Video is handled by folding frames into the batch: a clip (b, c, f, h, w) runs through the 2D layers as
(b*f, c, h, w), which is exactly an "inflated" UNet (per-frame convolutions and GroupNorm); only the
temporal modules look across frames. Per-call inputs travel in one :class:`ForwardContext` instead of a
dozen keyword arguments threaded through every block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..configs import SpeedConfig, TemporalConfig, UNetConfig
from .attention import SpatialTransformer
from .audio_layers import AudioModule, audio_module_width
from .context import ForwardContext
from .emotion_audio_layers import EmotionAudioModule
from .memory_temporal import MemoryTemporalModule
from .motion_frames import with_motion_frames
from .temporal_modules import TemporalModule


@dataclass
class DeepFeatureCache:
    """DeepCache-style reuse of deep features between adjacent denoising steps (Ma et al., 2023).

    On a refresh step the whole UNet runs and the features entering the last decoder level are kept;
    on the steps in between only the first encoder level (for its skip connections) and the last decoder
    level run, on the kept features. Adjacent steps change the deep features little, so this trades a
    small, measured quality loss for most of the denoiser's work (``docs/performance.md``).
    """

    features: torch.Tensor | None = None
    refresh: bool = True

    @property
    def reusing(self) -> bool:
        return not self.refresh and self.features is not None


class _Block(nn.Module):
    """Shared per-layer sequence: resnet -> spatial transformer -> audio module -> temporal module."""

    gradient_checkpointing = False
    key = ""  # set by the owning UNet to this block's path

    def resnet_key(self, i: int) -> str:
        return f"{self.key}.resnets.{i}"

    def _call(self, fn: Callable, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _layer(self, i: int, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if not len(self.attentions) and ctx.bank is not None and ctx.bank_plain_blocks:
            ctx.bank[self.resnet_key(i)] = x
        if len(self.attentions):
            x = self._call(self.attentions[i], x, ctx)
        if len(self.audio_modules):
            module = self.audio_modules[i]
            if not isinstance(module, EmotionAudioModule):
                x = self._call(module, x, ctx)
            elif ctx.audio_stream is not None:  # the stream goes on to the next audio module
                x, ctx.audio_stream = self._call(module, x, ctx.audio_stream, ctx.emotion)
        if len(self.motion_modules) and ctx.temporal and (len(self.attentions) or ctx.temporal_in_plain_blocks):
            x = self._call(self._temporal, i, x, ctx)
        return x

    def _temporal(self, i: int, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        module = self.motion_modules[i]
        if isinstance(module, MemoryTemporalModule):  # past frames: the features at this module's place
            key = self.attentions[i].key if len(self.attentions) else self.resnet_key(i)
            past = ctx.past_frames(key, x) if ctx.update_memory else None
            return module(x, ctx.frames, past, ctx.memory, ctx.update_memory)
        motion = ctx.motion(self.attentions[i].key) if len(self.attentions) else None
        return with_motion_frames(lambda t, n: module(t, n, ctx.speed_for(n)), x, ctx.frames, motion)


def _layer_modules(
    width: int,
    audio_width: int,
    cfg: UNetConfig,
    attention: bool,
    temporal: TemporalConfig | None,
    speed: SpeedConfig | None,
    audio_module_dim: int | None,
    emotion_classes: int | None = None,
):
    attn = SpatialTransformer(
        width, cfg.attention_heads, cfg.cross_attention_dim, cfg.norm_num_groups, separate_reference=cfg.reference_attention == "separate"
    ) if attention else None
    audio = None
    if attention and audio_module_dim is not None:
        audio_dim = audio_module_width(cfg.attention_heads, audio_width)
        if emotion_classes is not None:
            audio = EmotionAudioModule(width, audio_dim, cfg.attention_heads, audio_module_dim, cfg.norm_num_groups, emotion_classes)
        else:
            audio = AudioModule(width, audio_dim, cfg.attention_heads, audio_module_dim, cfg.norm_num_groups)
    motion = None
    if temporal is not None:
        motion = TemporalModule(width, temporal, speed) if temporal.memory_decay is None else MemoryTemporalModule(width, temporal, temporal.memory_decay)
    return attn, audio, motion


def _modules(items) -> nn.ModuleList:
    return nn.ModuleList([m for m in items if m is not None])


class DownBlock(_Block):
    def __init__(self, c_in, c_out, temb, cfg: UNetConfig, attention: bool, downsample: bool, temporal, speed, audio_module_dim, emotion_classes=None):
        super().__init__()
        resnets, layers = [], []
        for j in range(cfg.layers_per_block):
            r_in = c_in if j == 0 else c_out
            resnets.append(ResnetBlock2D(in_channels=r_in, out_channels=c_out, temb_channels=temb, eps=cfg.norm_eps, groups=cfg.norm_num_groups))
            layers.append(_layer_modules(c_out, r_in, cfg, attention, temporal, speed, audio_module_dim, emotion_classes))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = _modules(l[0] for l in layers)
        self.audio_modules = _modules(l[1] for l in layers)
        self.motion_modules = _modules(l[2] for l in layers)
        self.downsamplers = (
            nn.ModuleList([Downsample2D(c_out, use_conv=True, out_channels=c_out, padding=1, name="op")]) if downsample else None
        )

    def forward(self, x, temb, ctx: ForwardContext):
        states = []
        for i, resnet in enumerate(self.resnets):
            x = self._call(resnet, x, temb)
            x = self._layer(i, x, ctx)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class MidBlock(_Block):
    def __init__(self, c, temb, cfg: UNetConfig, temporal, speed, audio_module_dim, emotion_classes=None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels=c, out_channels=c, temb_channels=temb, eps=cfg.norm_eps, groups=cfg.norm_num_groups) for _ in range(2)]
        )
        mid_temporal = temporal if (temporal is not None and temporal.mid_block) else None
        attn, audio, motion = _layer_modules(c, c, cfg, True, mid_temporal, speed, audio_module_dim, emotion_classes)
        self.attentions = _modules([attn])
        self.audio_modules = _modules([audio])
        self.motion_modules = _modules([motion])

    def forward(self, x, temb, ctx: ForwardContext):
        x = self._call(self.resnets[0], x, temb)
        x = self._layer(0, x, ctx)
        return self._call(self.resnets[1], x, temb)


class UpBlock(_Block):
    def __init__(self, c_in, c_prev, c_out, temb, cfg: UNetConfig, attention, upsample, temporal, speed, audio_module_dim, emotion_classes=None):
        super().__init__()
        n = cfg.layers_per_block + 1
        resnets, layers = [], []
        for j in range(n):
            skip = c_in if j == n - 1 else c_out
            r_in = c_prev if j == 0 else c_out
            resnets.append(ResnetBlock2D(in_channels=r_in + skip, out_channels=c_out, temb_channels=temb, eps=cfg.norm_eps, groups=cfg.norm_num_groups))
            # The published decoder audio modules are c_in wide (the block-level in_channels, never updated).
            layers.append(_layer_modules(c_out, c_in, cfg, attention, temporal, speed, audio_module_dim, emotion_classes))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = _modules(l[0] for l in layers)
        self.audio_modules = _modules(l[1] for l in layers)
        self.motion_modules = _modules(l[2] for l in layers)
        self.upsamplers = nn.ModuleList([Upsample2D(c_out, use_conv=True, out_channels=c_out)]) if upsample else None

    def forward(self, x, skips: list[torch.Tensor], temb, ctx: ForwardContext, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)
            x = self._call(resnet, x, temb)
            x = self._layer(i, x, ctx)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetBase(nn.Module):
    """SD1.5-shaped UNet over frames folded into the batch.

    ``temporal`` adds motion modules (backbone), ``audio_module_dim`` the region audio modules (the emotion audio
    modules with ``emotion_classes``; the network's last one hands no audio on), ``output_head`` the final
    ``conv_norm_out``/``conv_out`` (the ReferenceNet does not need them), ``last_transformer_norm1_only`` cuts the
    last spatial transformer after its norm1 (a reference pass banks that and uses nothing after it).
    """

    def __init__(
        self,
        cfg: UNetConfig,
        *,
        temporal: TemporalConfig | None = None,
        speed: SpeedConfig | None = None,
        audio_module_dim: int | None = None,
        output_head: bool = True,
        emotion_classes: int | None = None,
        last_transformer_norm1_only: bool = False,
    ):
        super().__init__()
        self.cfg = cfg
        ch = cfg.block_out_channels
        temb = cfg.time_embed_dim
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_proj = Timesteps(ch[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        levels = len(ch)
        self.down_blocks = nn.ModuleList(
            DownBlock(ch[max(i - 1, 0)], ch[i], temb, cfg, cfg.attention_levels[i], i < levels - 1, temporal, speed, audio_module_dim, emotion_classes)
            for i in range(levels)
        )
        self.mid_block = MidBlock(ch[-1], temb, cfg, temporal, speed, audio_module_dim, emotion_classes)
        rev, rev_attn = list(reversed(ch)), list(reversed(cfg.attention_levels))
        self.up_blocks = nn.ModuleList(
            UpBlock(rev[min(i + 1, levels - 1)], rev[max(i - 1, 0)], rev[i], temb, cfg, rev_attn[i], i < levels - 1, temporal, speed, audio_module_dim, emotion_classes)
            for i in range(levels)
        )
        last = self.up_blocks[-1]
        if emotion_classes is not None and len(last.audio_modules):  # the last audio module hands no audio on
            old = last.audio_modules[-1]
            last.audio_modules[-1] = EmotionAudioModule(
                old.norm.num_channels, old.proj_in.out_channels, cfg.attention_heads, audio_module_dim, cfg.norm_num_groups,
                emotion_classes, last=True,
            )
        if last_transformer_norm1_only and len(last.attentions):
            width = last.attentions[-1].norm.num_channels
            last.attentions[-1] = SpatialTransformer(width, cfg.attention_heads, cfg.cross_attention_dim, cfg.norm_num_groups, norm1_only=True)
        if output_head:
            self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
            self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        else:
            self.conv_norm_out = self.conv_out = None
        for name, module in self.named_modules():
            if isinstance(module, (SpatialTransformer, _Block)):
                module.key = name

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def attention_keys(self) -> list[str]:
        return [m.key for m in self.modules() if isinstance(m, SpatialTransformer)]

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, _Block):
                module.gradient_checkpointing = enabled

    def time_embed(self, timestep: torch.Tensor | float, batch: int, frames: int, device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        emb = self.time_embedding(self.time_proj(t).to(self.dtype))
        return emb.repeat_interleave(frames, dim=0)

    def run(self, x: torch.Tensor, temb: torch.Tensor, ctx: ForwardContext, cache: DeepFeatureCache | None = None) -> torch.Tensor:
        """The down / mid / up path on folded frames; returns the decoder output (before the head).

        ``cache``: see :class:`DeepFeatureCache` (None = always the whole path).
        """
        if cache is not None and cache.reusing and cache.features.shape[0] == x.shape[0]:
            last = self.up_blocks[-1]
            skips = [x] + self.down_blocks[0](x, temb, ctx)[1]
            return last(cache.features, skips[: len(last.resnets)], temb, ctx, upsample_size=None)
        skips: list[torch.Tensor] = [x]
        for block in self.down_blocks:
            x, states = block(x, temb, ctx)
            skips.extend(states)
        x = self.mid_block(x, temb, ctx)
        for block in self.up_blocks:
            n = len(block.resnets)
            these, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[-2:] if skips else None
            if cache is not None and block is self.up_blocks[-1]:
                cache.features = x
            x = block(x, these, temb, ctx, upsample_size=size)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.conv_norm_out(x)))
