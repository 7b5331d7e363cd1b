"""HoloV's official Qwen2.5-VL path, the oracle for vlprune.methods.holov on Qwen2.5-VL (test use only).

Source: https://github.com/obananas/HoloV, commit 1d2e65e961e698ff0e7d5bb4625489177dd9deba, verbatim:
``qwen-model-HoloV/utils.py`` lines 4-37 (``scaled_dot_product_attention``), 43-198 (``HoloV``, the Qwen copy: it
also returns the kept positions) and 206-226 (``adjust_ids``); ``qwen-model-HoloV/modeling_qwen2_5_vl.py`` (the
authors' modified transformers file) lines 100-110 (``Qwen2_5_VisionRotaryEmbedding``), 199-217 (``rotate_half``,
``apply_rotary_pos_emb_vision``), 278-326 (``Qwen2_5_VLVisionSdpaAttention.forward``: returns the attention map
when asked), 346-363 (``Qwen2_5_VLVisionBlock.forward``), 442-613 (``rot_pos_emb``, ``get_window_index`` and the
vision tower's ``forward``: the last block's attention, head mean, query mean, averaged over each 2x2 unit) and
1897-1923 (the pruning block of ``Qwen2_5_VLForConditionalGeneration.forward``) as the body of ``prune`` below.
Line endings converted (utils.py has CRLF); nothing else changed in the copied lines.
Changed only to run on plain tensors (the ``[vlprune]`` parts): the classes' constructors take the modules of a
transformers 5.x ``Qwen2_5_VisionTransformerPretrainedModel`` (transformers 5.x has no ``rot_pos_emb`` /
``Qwen2_5_VisionRotaryEmbedding(dim)`` any more, so the authors' copies are used), and ``prune`` receives what the
forward computed before line 1897 (lines 1818-1822: ``image_embeds, image_attn = self.visual(...)``,
``image_token_start = torch.where(input_ids[0]==self.config.vision_start_token_id)[0]``, ``image_token_len =
image_embeds.shape[0]``) as arguments and returns ``inputs_embeds, input_ids, position_ids``.

Licence: the repository is released under the Apache License 2.0 (its LICENSE file); ``modeling_qwen2_5_vl.py``
carries "Copyright 2025 The Qwen Team and The HuggingFace Inc. team", Apache License 2.0.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Logger:  # [vlprune] the file's ``logger`` (only its deprecation warning is reached, never here)
    def warning_once(self, *args):
        pass


logger = _Logger()


# ---- qwen-model-HoloV/utils.py ---------------------------------------------------------------------------------
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
        is_causal=False, scale=None, enable_gqa=False) -> torch.Tensor:
    L, S = query.size(-2), key.size(-2)
    scale_factor = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    attn_bias = torch.zeros(L, S, dtype=query.dtype, device=query.device)
    if is_causal:
        assert attn_mask is None
        temp_mask = torch.ones(L, S, dtype=torch.bool).tril(diagonal=0)
        attn_bias.masked_fill_(temp_mask.logical_not(), float("-inf"))
        attn_bias.to(query.dtype)

    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            # 确保 attn_bias 的维度与 attn_mask 匹配
            if attn_mask.dim() > attn_bias.dim():
                # 如果 attn_mask 维度更高，需要扩展 attn_bias
                attn_bias = attn_bias.unsqueeze(0).expand_as(attn_mask)
            elif attn_mask.dim() < attn_bias.dim():
                # 如果 attn_mask 维度更低，需要压缩 attn_mask
                attn_mask = attn_mask.unsqueeze(0)
            attn_bias.masked_fill_(attn_mask.logical_not(), float("-inf"))
        else:
            attn_bias = attn_mask + attn_bias

    if enable_gqa:
        key = key.repeat_interleave(query.size(-3)//key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3)//value.size(-3), -3)

    attn_weight = query @ key.transpose(-2, -1) * scale_factor
    attn_weight += attn_bias
    attn_weight = torch.softmax(attn_weight, dim=-1)
    attn_weight = torch.dropout(attn_weight, dropout_p, train=True)
    attn_logits = attn_weight
    return attn_weight @ value,attn_logits


def HoloV(image_tokens, attention, num_patches, new_image_token_num, esp=1e-6):
    attention = attention.unsqueeze(0)
    B, N, D = image_tokens.shape
    device = image_tokens.device
    alpha = 1
    beta = 0.09
    power = 1
    pruned_image_tokens_list = []
    final_positions_list = []  

    for b in range(B):
        image_token = image_tokens[b]  # [N, D]
        image_attention = attention[b]  # [N]

        # Calculate dynamic patch size - handle uneven divisions
        patch_size = N // num_patches
        remainder = N % num_patches

        # Create patches with potentially uneven sizes
        image_tokens_patches = []
        attention_patches = []
        start_idx = 0
        patch_start_indices = []  

        for p in range(num_patches):
            # Last few patches get an extra token if there's a remainder
            current_patch_size = patch_size + (1 if p < remainder else 0)
            end_idx = start_idx + current_patch_size

            if current_patch_size > 0:  # Skip empty patches
                image_tokens_patches.append(image_token[start_idx:end_idx])
                attention_patches.append(image_attention[start_idx:end_idx])
                patch_start_indices.append(start_idx)  # 记录patch起始位置

            start_idx = end_idx

        # Process each patch separately
        patch_scores = []
        all_patches = []
        all_patch_indices = []  

        for p in range(len(image_tokens_patches)):
            patch_tokens = image_tokens_patches[p]  # [current_patch_size, D]
            patch_attn = attention_patches[p]  # [current_patch_size]
            patch_start = patch_start_indices[p]  
            current_patch_size = len(patch_tokens)

            
            patch_indices = torch.arange(patch_start, patch_start + current_patch_size, device=device)

            if current_patch_size <= 1:
                # If patch has only one token or is empty, handle specially
                patch_scores.append(patch_attn.mean() if len(patch_attn) > 0 else torch.tensor(0.0, device=device))
                all_patches.append(patch_tokens)
                all_patch_indices.append(patch_indices)
                continue

            with torch.no_grad():
                # Normalize patch tokens
                F_normalized = patch_tokens / (patch_tokens.norm(dim=1, keepdim=True) + esp)

                # Compute similarity matrix
                S = torch.mm(F_normalized, F_normalized.transpose(0, 1))

                # Create eye mask of appropriate size
                eye_mask = 1 - torch.eye(current_patch_size, device=device)
                S_masked = S * eye_mask

                # Compute mean and variance
                valid_entries = current_patch_size - 1
                mean_sim = S_masked.sum(dim=1) / valid_entries
                var_sim = ((S_masked - mean_sim.unsqueeze(1))**2).sum(dim=1) / valid_entries

                # Scale attention
                patch_attn_scaled = patch_attn * 1e3

                # Scale variance
                var_scaling = (torch.mean(torch.abs(patch_attn_scaled)) / 
                              (torch.mean(torch.abs(var_sim)) + esp))
                var_sim_scaled = var_sim * var_scaling

                # Calculate token scores
                token_scores = alpha * patch_attn_scaled + beta * var_sim_scaled

                # Compute patch score
                patch_score = token_scores.mean()
                patch_scores.append(patch_score)
                all_patches.append(patch_tokens)
                all_patch_indices.append(patch_indices)

        # Convert to tensor
        patch_scores = torch.stack(patch_scores) if patch_scores else torch.zeros(0, device=device)

        # Allocate new tokens based on scores
        if len(patch_scores) > 0:
            weights = (patch_scores ** power) / ((patch_scores ** power).sum() + esp)
            allocated = (weights * new_image_token_num).floor().long()

            # Distribute remaining tokens
            remaining = new_image_token_num - allocated.sum()
            if remaining > 0 and len(weights) > 0:
                _, indices = torch.topk(weights, k=min(remaining.item(), len(weights)))
                for idx in indices[:remaining]:
                    allocated[idx] += 1

            # Handle token overflow
            new_patches = []
            final_positions = []  

            for i, (patch, alloc, patch_indices) in enumerate(zip(all_patches, allocated, all_patch_indices)):
                patch_size = len(patch)
                if alloc <= 0:
                    continue
                elif alloc >= patch_size:
                    # Keep all tokens in this patch
                    new_patches.append(patch)
                    final_positions.append(patch_indices)
                else:
                    # Sample tokens based on attention scores
                    patch_attn = attention_patches[i]
                    _, top_indices = torch.topk(patch_attn, k=min(alloc.item(), patch_size))
                    new_patches.append(patch[top_indices])
                    final_positions.append(patch_indices[top_indices])

            # Combine all selected tokens
            if new_patches:
                new_image_tokens = torch.cat(new_patches, dim=0)
                final_positions = torch.cat(final_positions, dim=0) 
            else:
                new_image_tokens = torch.zeros((0, D), device=device)
                final_positions = torch.zeros(0, dtype=torch.long, device=device)
        else:
            # No patches to process
            new_image_tokens = torch.zeros((0, D), device=device)
            final_positions = torch.zeros(0, dtype=torch.long, device=device)

        # Pad or truncate to match expected new_image_token_num
        actual_tokens = new_image_tokens.size(0)
        if actual_tokens < new_image_token_num:
            # Pad with zeros if we don't have enough tokens
            padding = torch.zeros((new_image_token_num - actual_tokens, D), device=device)
            new_image_tokens = torch.cat([new_image_tokens, padding], dim=0)
            
            
            padding_positions = torch.full((new_image_token_num - actual_tokens,), -1, dtype=torch.long, device=device)
            final_positions = torch.cat([final_positions, padding_positions], dim=0)
        elif actual_tokens > new_image_token_num:
            # Truncate if we have too many tokens
            new_image_tokens = new_image_tokens[:new_image_token_num]
            final_positions = final_positions[:new_image_token_num]

        pruned_image_tokens_list.append(new_image_tokens)
        final_positions_list.append(final_positions)

    
    return torch.stack(pruned_image_tokens_list, dim=0), torch.stack(final_positions_list, dim=0).squeeze(0)


def adjust_ids(input_ids, position_ids, image_token_start, image_token_len, final_position):
    
    if input_ids is not None:
        pre_ids = input_ids[:, :image_token_start]
        post_ids = input_ids[:, image_token_start + image_token_len:]
        kept_ids = input_ids[:, image_token_start:image_token_start + image_token_len]
        kept_ids = kept_ids[:, final_position]  
        adjusted_input_ids = torch.cat([pre_ids, kept_ids, post_ids], dim=1)
    else:
        adjusted_input_ids = None
    
    if position_ids is not None:
        pre_pos = position_ids[:, :, :image_token_start]
        post_pos = position_ids[:, :, image_token_start + image_token_len:]
        kept_pos = position_ids[:, :, image_token_start:image_token_start + image_token_len]
        kept_pos = kept_pos[:, :, final_position]  
        adjusted_position_ids = torch.cat([pre_pos, kept_pos, post_pos], dim=2)
    else:
        adjusted_position_ids = None
        
    return adjusted_input_ids, adjusted_position_ids


# ---- qwen-model-HoloV/modeling_qwen2_5_vl.py -------------------------------------------------------------------

class Qwen2_5_VisionRotaryEmbedding(nn.Module):
    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seqlen: int) -> torch.Tensor:
        seq = torch.arange(seqlen, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(seq, self.inv_freq)
        return freqs


def rotate_half(x):
    """Rotates half the hidden dims of the input."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb_vision(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    orig_q_dtype = q.dtype
    orig_k_dtype = k.dtype
    q, k = q.float(), k.float()
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    q_embed = q_embed.to(orig_q_dtype)
    k_embed = k_embed.to(orig_k_dtype)
    return q_embed, k_embed


class VisionSdpaAttention(nn.Module):
    def __init__(self, attn) -> None:  # [vlprune] the transformers 5.x module's weights
        super().__init__()
        self.num_heads = attn.num_heads
        self.qkv = attn.qkv
        self.proj = attn.proj

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        rotary_pos_emb: Optional[torch.Tensor] = None,
        position_embeddings: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        output_attentions: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        seq_length = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        if position_embeddings is None:
            logger.warning_once(
                "The attention layers in this model are transitioning from computing the RoPE embeddings internally "
                "through [rotary_pos_emb](file://d:\code\Qwen2.5-VL\model\modeling_qwen2_5_vl.py#L0-L0) (2D tensor of RoPE theta values), to using externally computed "
                "[position_embeddings](file://d:\code\LLaVA-NeXT\llava\model\multimodal_resampler\qformer.py#L0-L0) (Tuple of tensors, containing cos and sin). In v4.54 [rotary_pos_emb](file://d:\code\Qwen2.5-VL\model\modeling_qwen2_5_vl.py#L0-L0) will be "
                "removed and [position_embeddings](file://d:\code\LLaVA-NeXT\llava\model\multimodal_resampler\qformer.py#L0-L0) will be mandatory."
            )
            emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
            cos = emb.cos()
            sin = emb.sin()
        else:
            cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)

        attention_mask = torch.zeros([1, seq_length, seq_length], device=q.device, dtype=torch.bool)
        for i in range(1, len(cu_seqlens)):
            attention_mask[..., cu_seqlens[i - 1] : cu_seqlens[i], cu_seqlens[i - 1] : cu_seqlens[i]] = True
        q = q.transpose(0, 1)
        k = k.transpose(0, 1)
        v = v.transpose(0, 1)
        
        # 如果需要输出注意力权重，则手动计算注意力
        if output_attentions:
           
            attn_output, attn_weights = scaled_dot_product_attention(
                q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attention_mask, dropout_p=0.0
            )
        else:
            # 使用SDPA计算注意力输出
            attn_output = F.scaled_dot_product_attention(
                q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attention_mask, dropout_p=0.0
            )
            attn_weights = None
            
        attn_output = attn_output.squeeze(0).transpose(0, 1)
        attn_output = attn_output.reshape(seq_length, -1)
        attn_output = self.proj(attn_output)
        
        return attn_output, attn_weights


class VisionBlock(nn.Module):
    def __init__(self, blk) -> None:  # [vlprune] the transformers 5.x block's modules
        super().__init__()
        self.norm1, self.norm2, self.mlp = blk.norm1, blk.norm2, blk.mlp
        self.attn = VisionSdpaAttention(blk.attn)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        rotary_pos_emb: Optional[torch.Tensor] = None,
        position_embeddings: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        output_attentions: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        attn_output, attn_weights = self.attn(
            self.norm1(hidden_states),
            cu_seqlens=cu_seqlens,
            rotary_pos_emb=rotary_pos_emb,
            position_embeddings=position_embeddings,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.norm2(hidden_states))
        return hidden_states, attn_weights


class VisionTower(nn.Module):
    def __init__(self, visual) -> None:  # [vlprune] the transformers 5.x tower's modules (lines 414-440)
        super().__init__()
        config = visual.config
        self.spatial_merge_size = config.spatial_merge_size
        self.patch_size = config.patch_size
        self.fullatt_block_indexes = config.fullatt_block_indexes
        self.window_size = config.window_size
        self.spatial_merge_unit = self.spatial_merge_size * self.spatial_merge_size
        self.patch_embed = visual.patch_embed
        head_dim = config.hidden_size // config.num_heads
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)  # [vlprune] < 5.17: none
        self.rotary_pos_emb = Qwen2_5_VisionRotaryEmbedding(head_dim // 2, theta)
        self.blocks = nn.ModuleList([VisionBlock(blk) for blk in visual.blocks])
        self.merger = visual.merger
        self.gradient_checkpointing = False

    def rot_pos_emb(self, grid_thw):
        pos_ids = []
        for t, h, w in grid_thw:
            hpos_ids = torch.arange(h).unsqueeze(1).expand(-1, w)
            hpos_ids = hpos_ids.reshape(
                h // self.spatial_merge_size,
                self.spatial_merge_size,
                w // self.spatial_merge_size,
                self.spatial_merge_size,
            )
            hpos_ids = hpos_ids.permute(0, 2, 1, 3)
            hpos_ids = hpos_ids.flatten()

            wpos_ids = torch.arange(w).unsqueeze(0).expand(h, -1)
            wpos_ids = wpos_ids.reshape(
                h // self.spatial_merge_size,
                self.spatial_merge_size,
                w // self.spatial_merge_size,
                self.spatial_merge_size,
            )
            wpos_ids = wpos_ids.permute(0, 2, 1, 3)
            wpos_ids = wpos_ids.flatten()
            pos_ids.append(torch.stack([hpos_ids, wpos_ids], dim=-1).repeat(t, 1))
        pos_ids = torch.cat(pos_ids, dim=0)
        max_grid_size = grid_thw[:, 1:].max()
        rotary_pos_emb_full = self.rotary_pos_emb(max_grid_size)
        rotary_pos_emb = rotary_pos_emb_full[pos_ids].flatten(1)
        return rotary_pos_emb

    def get_window_index(self, grid_thw):
        window_index: list = []
        cu_window_seqlens: list = [0]
        window_index_id = 0
        vit_merger_window_size = self.window_size // self.spatial_merge_size // self.patch_size

        for grid_t, grid_h, grid_w in grid_thw:
            llm_grid_h, llm_grid_w = (
                grid_h // self.spatial_merge_size,
                grid_w // self.spatial_merge_size,
            )
            index = torch.arange(grid_t * llm_grid_h * llm_grid_w).reshape(grid_t, llm_grid_h, llm_grid_w)
            pad_h = vit_merger_window_size - llm_grid_h % vit_merger_window_size
            pad_w = vit_merger_window_size - llm_grid_w % vit_merger_window_size
            num_windows_h = (llm_grid_h + pad_h) // vit_merger_window_size
            num_windows_w = (llm_grid_w + pad_w) // vit_merger_window_size
            index_padded = F.pad(index, (0, pad_w, 0, pad_h), "constant", -100)
            index_padded = index_padded.reshape(
                grid_t,
                num_windows_h,
                vit_merger_window_size,
                num_windows_w,
                vit_merger_window_size,
            )
            index_padded = index_padded.permute(0, 1, 3, 2, 4).reshape(
                grid_t,
                num_windows_h * num_windows_w,
                vit_merger_window_size,
                vit_merger_window_size,
            )
            seqlens = (index_padded != -100).sum([2, 3]).reshape(-1)
            index_padded = index_padded.reshape(-1)
            index_new = index_padded[index_padded != -100]
            window_index.append(index_new + window_index_id)
            cu_seqlens_tmp = seqlens.cumsum(0) * self.spatial_merge_unit + cu_window_seqlens[-1]
            cu_window_seqlens.extend(cu_seqlens_tmp.tolist())
            window_index_id += (grid_t * llm_grid_h * llm_grid_w).item()
        window_index = torch.cat(window_index, dim=0)

        return window_index, cu_window_seqlens

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, output_attentions: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(seq_len, hidden_size)`):
                The final hidden states of the model.
            grid_thw (`torch.Tensor` of shape `(num_images_or_videos, 3)`):
                The temporal, height and width of feature shape of each image in LLM.
            output_attentions (`bool`, *optional*):
                Whether or not to return the attention weights of the last layer.

        Returns:
            `torch.Tensor`: hidden_states and optionally attention weights from the last layer.
        """
        hidden_states = self.patch_embed(hidden_states)
        rotary_pos_emb = self.rot_pos_emb(grid_thw)
        window_index, cu_window_seqlens = self.get_window_index(grid_thw)
        cu_window_seqlens = torch.tensor(
            cu_window_seqlens,
            device=hidden_states.device,
            dtype=grid_thw.dtype if torch.jit.is_tracing() else torch.int32,
        )
        cu_window_seqlens = torch.unique_consecutive(cu_window_seqlens)

        seq_len, _ = hidden_states.size()
        hidden_states = hidden_states.reshape(seq_len // self.spatial_merge_unit, self.spatial_merge_unit, -1)
        hidden_states = hidden_states[window_index, :, :]
        hidden_states = hidden_states.reshape(seq_len, -1)
        rotary_pos_emb = rotary_pos_emb.reshape(seq_len // self.spatial_merge_unit, self.spatial_merge_unit, -1)
        rotary_pos_emb = rotary_pos_emb[window_index, :, :]
        rotary_pos_emb = rotary_pos_emb.reshape(seq_len, -1)
        emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
        position_embeddings = (emb.cos(), emb.sin())

        cu_seqlens = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0]).cumsum(
            dim=0,
            # Select dtype based on the following factors:
            #  - FA2 requires that cu_seqlens_q must have dtype int32
            #  - torch.onnx.export requires that cu_seqlens_q must have same dtype as grid_thw
            # See https://github.com/huggingface/transformers/pull/34852 for more information
            dtype=grid_thw.dtype if torch.jit.is_tracing() else torch.int32,
        )
        cu_seqlens = F.pad(cu_seqlens, (1, 0), value=0)

        last_attention_weights = None
        
        for layer_num, blk in enumerate(self.blocks):
            if layer_num in self.fullatt_block_indexes:
                cu_seqlens_now = cu_seqlens
            else:
                cu_seqlens_now = cu_window_seqlens
            
            
            output_last_layer_attention = output_attentions and (layer_num == len(self.blocks) - 1)
            
                
            if self.gradient_checkpointing and self.training:
                hidden_states, attn_weights = self._gradient_checkpointing_func(
                    blk.__call__, 
                    hidden_states, 
                    cu_seqlens_now, 
                    None, 
                    position_embeddings,
                    output_last_layer_attention
                )
            else:
                hidden_states, attn_weights = blk(
                    hidden_states, 
                    cu_seqlens=cu_seqlens_now, 
                    position_embeddings=position_embeddings,
                    output_attentions=output_last_layer_attention
                )
            
            if output_last_layer_attention:
                last_attention_weights = attn_weights
        attention_scores = None
        if last_attention_weights is not None:
            
            
            if last_attention_weights.dim() == 3:  # [num_heads, seq_len, seq_len]
                
                attention_weights_mean = last_attention_weights.mean(dim=0)  # [seq_len, seq_len]
                
                attention_scores = attention_weights_mean.mean(dim=0)  # [seq_len]
            if last_attention_weights.dim() == 4:  # [1, num_heads, seq_len, seq_len]
                attention_weights_mean = last_attention_weights.mean(dim=1)  # [num_heads, seq_len, seq_len]
                attention_scores = attention_weights_mean.mean(dim=1)  
            else:
                attention_scores = torch.ones(seq_len, device=hidden_states.device)
        pre_merge_seq_len = hidden_states.shape[0]
        hidden_states = self.merger(hidden_states)
        reverse_indices = torch.argsort(window_index)
        hidden_states = hidden_states[reverse_indices, :]
        if attention_scores is not None:
            post_merge_seq_len = hidden_states.shape[0]
            merge_ratio = pre_merge_seq_len // post_merge_seq_len
            
            if merge_ratio > 1:
                attention_scores = attention_scores[:post_merge_seq_len * merge_ratio]
                attention_scores = attention_scores.view(post_merge_seq_len, merge_ratio)
                attention_scores = attention_scores.mean(dim=1)
        
        return hidden_states, attention_scores


# [vlprune] lines 1897-1923 of ``Qwen2_5_VLForConditionalGeneration.forward``, verbatim
def prune(self, pixel_values, inputs_embeds, input_ids, position_ids, image_token_start, image_token_len, image_attn):
######################################change###########################################
######################################change###########################################

        if pixel_values is not None:
            image_token_end = image_token_start+image_token_len
            pre_prompt = inputs_embeds[:,:image_token_start,:]
            image_tokens = inputs_embeds[:,image_token_start:image_token_end,:]
            others = inputs_embeds[:,image_token_end:,:]
            
            
            prune_rate = self.config.prune_rate
            prune_method = self.config.prune_method
            
            
            
            keep_num = int(image_token_len * prune_rate)
        
            if prune_method == "HoloV":
                num_patches = int(((1024/576)*image_token_len)/keep_num)
                num_patches = max(1,int(((1024/576)*image_token_len)/keep_num))
                new_image_tokens, final_position = HoloV(image_tokens, image_attn, num_patches, keep_num)
            else:
                raise ValueError(f"Unknown prune_method: {prune_method}. Must be 'merge_tokens' or 'token_pruning'")
            
            new_input_embeds = torch.cat([pre_prompt,new_image_tokens,others],dim=1)
            inputs_embeds = new_input_embeds.to(pre_prompt.dtype)
            input_ids, position_ids = adjust_ids(input_ids, position_ids, image_token_start, image_token_len, final_position)
        return inputs_embeds, input_ids, position_ids  # [vlprune]
