"""HiRED's official budget split and token selection, the oracle for vlprune.methods.hired (test use only).

Source: https://github.com/hasanar1f/HiRED, commit 502d6dd79a03e87cc808cedba8b8a951d93cb62b,
``transformers/src/transformers/models/llava_next/modeling_llava_next.py`` lines 490-559
(``LlavaNextForConditionalGeneration.HiRED_sub_img_budgets`` and ``HiRED_token_selection``), verbatim as methods of
``HiRED`` below. Changed only to run on plain tensors: ``self.config`` (read by ``get_anyres_image_grid_shape`` at
lines 501-505) is ``HiRED``'s config, and ``get_anyres_image_grid_shape`` (lines 99-128, which picks the anyres grid
from the image size) is replaced by one that returns the grid shape the test passes as ``image_sizes[idx]``,
in the order the original returns it (height tiles, width tiles). The attention inputs are what
``ViT_Attn_Hook.get_attn`` (lines 77-96) returns: per-head softmax of CLIP layers 0 and 22, (tiles, H, 1+S, 1+S).

Licence: the repository's LICENSE is MIT, "Copyright (c) 2024 Hasan Arif"; the file itself is a modified
Hugging Face transformers file, "Copyright 2024 the HuggingFace Inc. team", Apache License 2.0.
"""
from types import SimpleNamespace

import torch


def get_anyres_image_grid_shape(image_size, grid_pinpoints, patch_size):
    """[vlprune] stands in for the official lines 99-128: ``image_size`` is already the grid shape."""
    return tuple(image_size)


class HiRED:
    config = SimpleNamespace(image_grid_pinpoints=[], vision_config=SimpleNamespace(image_size=336))

    def HiRED_sub_img_budgets(self, spatial_distribution, num_patches, sub_img_budget, num_vision_tokens, image_size):
        # spatial_distribution: torch.tensor [num_tokens]
        # num_patches: int
        # sub_img_budget: int
        # num_vision_tokens: int
        # image_size: tuple[int, int]

        num_sub_img_patches = num_patches - 1

        # get the applied partition of the image
        num_patch_width, num_patch_height = get_anyres_image_grid_shape(
                    image_size,
                    self.config.image_grid_pinpoints,
                    self.config.vision_config.image_size,
        )

        assert num_patch_width * num_patch_height == num_sub_img_patches
        
        spatial_distribution = spatial_distribution.reshape(num_patch_height, num_patch_width, -1)  # [num_patches_height, num_patches_width, num_vision_tokens]
        sum_img_mask = spatial_distribution.sum(dim=-1)  # [num_patches_height, num_patches_width]
        sum_img_mask = sum_img_mask.reshape(-1)  # [num_sub_img_patches]    

        # Ensure the budget ratio is calculated correctly
        budget_ratio = sum_img_mask / sum_img_mask.sum()  # [num_other_patches]
        num_topk_others = (budget_ratio * sub_img_budget).int()  # [num_other_patches]

        return torch.clamp(num_topk_others, max=num_vision_tokens)

    def HiRED_token_selection(self,top_layer_attn,bottom_layer_attn, num_patches, full_image_patch, num_vision_tokens, token_budget_rate,alpha,image_sizes):
        # top_layer_attn: tuples of tensors shape: [sum(num_patches), num_heads, num_context, num_context]
        # bottom_layer_attn: tuples of tensors shape: [sum(num_patches), num_heads, num_context, num_context]
        # num_patches: List[int]
        # full_image_patch: int (usually 0)
        # num_vision_tokens: int, usually 576
        # token_budget_rate: float, how much we want to include from full image
        # alpha: float, how much we want to include from sub-images
        # image_sizes: List[tuple], each tuple is the size of the image
        
        top_layer_attn = top_layer_attn[:,:,0,-num_vision_tokens:] # class token attn 
        bottom_layer_attn = bottom_layer_attn[:,:,0,-num_vision_tokens:] # class token attn
        top_layer_attn = torch.split(top_layer_attn, num_patches, dim=0) # tuple of [num_patches, num_heads, num_vision_tokens]
        bottom_layer_attn = torch.split(bottom_layer_attn, num_patches, dim=0) # tuple of [num_patches, num_heads, num_vision_tokens]
        masks = []
        for idx, top_attn, bottom_attn in zip(range(len(num_patches)), top_layer_attn, bottom_layer_attn):
            bottom_attn = bottom_attn.sum(dim=1) # [num_patches, num_vision_tokens] # aggregate over all heads
            top_attn = top_attn.sum(dim=1) # [num_patches, num_vision_tokens] # aggregate over all heads
            mask = torch.zeros_like(bottom_attn, dtype=torch.bool) # [num_patches, num_vision_tokens]
            num_patch = bottom_attn.shape[0]
            num_total_budget = int(num_patch * num_vision_tokens * token_budget_rate)
            full_img_budget = min(int(num_total_budget * alpha), num_vision_tokens)
            total_sub_img_budget = min(num_total_budget-full_img_budget, (num_patch-1)*num_vision_tokens)
            
            full_bottom_attn = bottom_attn[full_image_patch] # [num_vision_tokens]
            full_top_attn = top_attn[full_image_patch] # [num_vision_tokens]
            sub_img_attn = bottom_attn[full_image_patch+1:] # [num_patch-1, num_vision_tokens]

            # select topk tokens for the full-image
            mask[full_image_patch, full_bottom_attn.topk(full_img_budget, largest=True).indices] = True

            if total_sub_img_budget > 0: # token selection for sub-images
                spatial_distribution = torch.zeros_like(top_attn[full_image_patch], dtype=torch.bool)
                spatial_distribution[full_top_attn.topk(int(num_vision_tokens*(1-alpha)), largest=True).indices] = True
                sub_img_budgets = self.HiRED_sub_img_budgets(spatial_distribution, num_patch, total_sub_img_budget, num_vision_tokens, image_sizes[idx])
                
                # select topk tokens for each sub-image
                for i, num_topk_other in enumerate(sub_img_budgets):
                    mask[i+1, sub_img_attn[i].topk(num_topk_other, largest=True).indices] = True

            masks.append(mask)
        return tuple(masks)
