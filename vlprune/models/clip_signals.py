"""Signals of one CLIP vision forward pass (LLaVA-1.5 / LLaVA-NeXT towers), computed lazily and cached."""
from __future__ import annotations

import zlib
from functools import cached_property

import torch
from torch import nn

from ..attention import decoupled_attention, vit_attention_probs, vit_keys
from ..cuda_graph import GraphedCall
from ..text import ClipText, QuestionBatch
from .encoder_pruning import PruneStep, run_blocks_pruned


def check_llava_feature_config(config, family: str) -> None:
    """LLaVA-1.5 / LLaVA-NeXT: vlprune reads ONE feature layer with [CLS] dropped ("default" strategy)."""
    if not isinstance(config.vision_feature_layer, int):
        raise NotImplementedError(f"vlprune supports one vision_feature_layer (an int), as {family} uses")
    if config.vision_feature_select_strategy != "default":
        raise NotImplementedError(
            f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: vlprune expects 'default' "
            f"([CLS] dropped), as {family} uses"
        )


def cls_attention_row(hidden: torch.Tensor, *, block: nn.Module) -> torch.Tensor:
    """Head-mean [CLS] -> patch attention (B, N) of ``block`` recomputed from its input ``hidden`` (eq. 4)."""
    probs = vit_attention_probs(block.self_attn, block.layer_norm1(hidden), slice(0, 1))  # (B, H, 1, 1+N)
    return probs.mean(dim=1)[:, 0, 1:]


def decoupled_joint(
    hidden: torch.Tensor, *, block: nn.Module, post_layernorm: nn.Module, projection: nn.Module, mode: str
) -> torch.Tensor:
    """DeSAP eq. 2 with ``block``'s attention on ``hidden``, then ``post_layernorm`` and CLIP's visual projection:
    (B, 1+N, e) in the joint image-text space, on ``hidden``'s device (the projection may live elsewhere)."""
    a_d = post_layernorm(decoupled_attention(block.self_attn, block.layer_norm1(hidden), mode))
    a_d = a_d.to(device=projection.weight.device, dtype=projection.weight.dtype)
    return projection(a_d).to(hidden.device)


# on a GPU: a dozen small kernels each, launched once from a CUDA graph per (shape, modules); off it they just run
_cls_attention_graphed = GraphedCall(cls_attention_row)
_decoupled_graphed = GraphedCall(decoupled_joint)


class ClipVisionSignals:
    """Implements ``methods.base.SignalSource`` for a ``CLIPVisionTransformer``.

    One vision forward with ``output_hidden_states``; the feature layer f (LLaVA: -2) gives the features
    (``hidden_states[f]`` without [CLS]); [CLS] attention and keys are recomputed from the projections of
    the block that produced them (its input is ``hidden_states[f-1]``); DeSAP's decoupled attention runs the
    NEXT block's attention on ``hidden_states[f]`` (eq. 2), then ``post_layernorm`` + ``visual_projection``, and
    ``last_cls_attention`` is the [CLS] row of the tower's last block (for LLaVA's f = -2: that same block).
    """

    def __init__(
        self,
        vision_model: nn.Module,
        pixel_values: torch.Tensor,
        feature_layer: int,
        questions: QuestionBatch | None = None,
        clip_text: ClipText | None = None,
        grid: tuple[int, int] | None = None,
        projector: nn.Module | None = None,
    ) -> None:
        self.vision_model = vision_model
        self.pixel_values = pixel_values
        layers = vision_model.encoder.layers
        self.f = feature_layer % (len(layers) + 1)
        if self.f == 0:
            raise ValueError("the feature layer is the patch embedding: there is no attention to read")
        self.block = layers[self.f - 1]  # produced hidden_states[f]
        self.next_block = layers[self.f] if self.f < len(layers) else None
        self.questions = questions
        self.clip_text = clip_text
        self.projector = projector
        if grid is None:
            side = int(round((self.hidden_states[self.f].shape[1] - 1) ** 0.5))
            grid = (side, side)
        self.grid = grid

    @cached_property
    def hidden_states(self) -> list[torch.Tensor]:
        """``hidden_states[0..f]`` of the unpruned tower, run on first use (a method that prunes inside the tower
        with :meth:`prune_in_encoder` never pays for it)."""
        return self._forward_to_feature_layer(self.vision_model, self.pixel_values, self.f)

    def prune_in_encoder(self, step: PruneStep, images: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the tower up to the feature layer on ``pixel_values[images]``, letting ``step`` drop rows between blocks
        (``encoder_pruning.run_blocks_pruned``; row 0 is [CLS]). Returns the feature layer's surviving rows (b, L', D)
        and their positions in the unpruned sequence (b, L'), [CLS] = 0."""
        tower = self.vision_model
        hidden = tower.pre_layrnorm(tower.embeddings(self.pixel_values[images]))
        return run_blocks_pruned(hidden, tower.encoder.layers[: self.f], step)

    @staticmethod
    def _forward_to_feature_layer(tower: nn.Module, pixel_values: torch.Tensor, f: int) -> list[torch.Tensor]:
        """``hidden_states[0..f]`` of the tower, running only the blocks up to the feature layer.

        The same module calls as ``CLIPVisionModel.forward`` (embeddings, pre-LN, encoder blocks), stopped at the
        layer LLaVA reads: the blocks after it (LLaVA-1.5: the last one) only feed outputs LLaVA discards.
        """
        hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))
        states = [hidden]
        for block in tower.encoder.layers[:f]:
            hidden = block(hidden, None)
            states.append(hidden)
        return states

    def features(self) -> torch.Tensor:
        return self.hidden_states[self.f][:, 1:]

    def cls_feature(self) -> torch.Tensor:
        return self.hidden_states[self.f][:, 0]

    @cached_property
    def _cls_attention(self) -> torch.Tensor:
        return _cls_attention_graphed(self.hidden_states[self.f - 1], block=self.block)

    def cls_attention(self) -> torch.Tensor:
        return self._cls_attention

    def layer_cls_attention(self, layer: int) -> torch.Tensor:
        """Head-mean [CLS] -> patch attention (B, N) of block ``layer`` (0-based, below the feature layer), from
        its input ``hidden_states[layer]`` (HiRED's early layer)."""
        if not 0 <= layer < self.f:
            raise ValueError(f"layer must index a block below the feature layer (0..{self.f - 1}), got {layer}")
        if layer == self.f - 1:
            return self._cls_attention
        return cls_attention_row(self.hidden_states[layer], block=self.vision_model.encoder.layers[layer])

    @cached_property
    def _last_block_input(self) -> torch.Tensor:
        """The input of the tower's last block (LLaVA, f = -2: the features' layer itself)."""
        layers = self.vision_model.encoder.layers
        if self.next_block is None:  # the feature layer is the last block's output
            return self.hidden_states[self.f - 1]
        hidden = self.hidden_states[self.f]
        for block in layers[self.f : len(layers) - 1]:  # LLaVA (f = -2): none, the last block reads the features
            hidden = block(hidden, None)
        return hidden

    @cached_property
    def _last_cls_attention(self) -> torch.Tensor:
        if self.next_block is None:  # the feature layer is the last block's output: the same block
            return self._cls_attention
        return _cls_attention_graphed(self._last_block_input, block=self.vision_model.encoder.layers[-1])

    @cached_property
    def _last_block_full_width(self) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.vision_model.encoder.layers[-1]
        normed = block.layer_norm1(self._last_block_input)
        q, k = block.self_attn.q_proj(normed[:, :1]).float(), block.self_attn.k_proj(normed)
        probs = torch.softmax(q @ k.float().transpose(1, 2) * k.shape[-1] ** -0.5, dim=-1)
        return probs[:, 0, 1:], k[:, 1:]

    def last_block_full_width(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LLaVA-PruMerge's signals of the last block: the [CLS] row of ONE softmax over the full width,
        ``softmax(q k^T / sqrt(C))`` of its ``q_proj`` / ``k_proj`` outputs (B, N), and those keys (B, N, C)."""
        return self._last_block_full_width

    def last_cls_attention(self) -> torch.Tensor:
        return self._last_cls_attention

    def projected_features(self) -> torch.Tensor:
        if self.projector is None:
            raise ValueError("merge_space='projected' needs the model's projector; this source was built without it")
        return self.projector(self.features())

    @cached_property
    def _keys(self) -> torch.Tensor:
        # (VisionZip, which also reads the [CLS] row, pays the block's layer norm twice: one kernel, not worth a
        # second output of the [CLS] graph that DeSAP and VisPruner would carry for nothing)
        return vit_keys(self.block.self_attn, self.block.layer_norm1(self.hidden_states[self.f - 1]))[:, 1:]

    def keys(self) -> torch.Tensor:
        return self._keys

    def decoupled(self, mode: str) -> torch.Tensor:
        if self.clip_text is None:
            raise ValueError("decoupled attention needs the CLIP visual projection: pass clip=... to vlprune.apply")
        if self.next_block is None:
            raise ValueError("the feature layer is the last block: there is no next block for decoupled attention")
        s = self.hidden_states[self.f]
        modules = {"block": self.next_block, "post_layernorm": self.vision_model.post_layernorm,
                   "projection": self.clip_text.visual_projection}
        if modules["projection"].weight.device == s.device:
            return _decoupled_graphed(s, mode=mode, **modules)
        return decoupled_joint(s, mode=mode, **modules)  # CLIP's projection on another device: no graph

    def question(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.questions is None:
            raise ValueError("no question encoder: pass clip=... (and processor=...) to vlprune.apply")
        return self.questions.rows(slice(None), self.pixel_values.device)

    def has_question(self) -> bool:
        return self.questions is not None and self.questions.any_present(slice(None))

    def image_keys(self) -> list[int]:
        return self._image_keys

    @cached_property
    def _image_keys(self) -> list[int]:
        """CRC32 of each image's pixels (once per pass, and only if a seeded method asks)."""
        flat = self.pixel_values.detach().float().cpu().reshape(self.pixel_values.shape[0], -1)
        return [zlib.crc32(row.numpy()) for row in flat]  # the array's buffer, not a copy
