"""HoloV's official LLaVA-NeXT path, the oracle for vlprune.methods.holov on LLaVA-NeXT (test use only).

Source: https://github.com/obananas/HoloV, commit 1d2e65e961e698ff0e7d5bb4625489177dd9deba, verbatim:
``llava/model/llava_arch.py`` lines 100-128 (``unpad_image``) and lines 140-239 (``encode_images`` and
``prepare_inputs_labels_for_multimodal`` up to and including its ``HoloV`` call) as methods of ``HoloVLlava`` below;
``llava/mm_utils.py`` lines 12-39 (``select_best_resolution``) and 99-116 (``get_anyres_image_grid_shape``).
``HoloV`` itself is ``holov_official.py`` (``llava/model/utils.py`` lines 22-151 of the same commit).
Changed only to run on plain tensors: what the method reads from ``self`` (``get_model()``, ``get_vision_tower()``,
``config``) is given by ``HoloVLlava``'s constructor, the vision tower returns what the official ``clip_encoder.py``
``feature_select`` returns (lines 35-46: ``hidden_states[select_layer][:, 1:]`` and the per-head [CLS] row of
``attentions[select_layer]``), and the function returns ``image_features`` after the ``HoloV`` call (marked
``[vlprune]``); the rest of the function (placing the tokens in the LLM's input) is left out.
Image sizes are LLaVA's (width, height) and the grid pinpoints (width, height), as in the official code.

Licence: the repository is released under the Apache License 2.0 (its LICENSE file); ``llava_arch.py`` carries
"Copyright 2023 Haotian Liu", Apache License 2.0.
"""
import ast
from types import SimpleNamespace

import torch

from .holov_official import HoloV


def select_best_resolution(original_size, possible_resolutions):
    """
    Selects the best resolution from a list of possible resolutions based on the original size.

    Args:
        original_size (tuple): The original size of the image in the format (width, height).
        possible_resolutions (list): A list of possible resolutions in the format [(width1, height1), (width2, height2), ...].

    Returns:
        tuple: The best fit resolution in the format (width, height).
    """
    original_width, original_height = original_size
    best_fit = None
    max_effective_resolution = 0
    min_wasted_resolution = float('inf')

    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective_resolution = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted_resolution = (width * height) - effective_resolution

        if effective_resolution > max_effective_resolution or (effective_resolution == max_effective_resolution and wasted_resolution < min_wasted_resolution):
            max_effective_resolution = effective_resolution
            min_wasted_resolution = wasted_resolution
            best_fit = (width, height)

    return best_fit


def get_anyres_image_grid_shape(image_size, grid_pinpoints, patch_size):
    """
    Calculate the shape of the image patch grid after the preprocessing for images of any resolution.

    Args:
        image_size (tuple): The size of the input image in the format (width, height).
        grid_pinpoints (str): A string representation of a list of possible resolutions.
        patch_size (int): The size of each image patch.

    Returns:
        tuple: The shape of the image patch grid in the format (width, height).
    """
    if type(grid_pinpoints) is list:
        possible_resolutions = grid_pinpoints
    else:
        possible_resolutions = ast.literal_eval(grid_pinpoints)
    width, height = select_best_resolution(image_size, possible_resolutions)
    return width // patch_size, height // patch_size


def unpad_image(tensor, original_size):
    """
    Unpads a PyTorch tensor of a padded and resized image.

    Args:
    tensor (torch.Tensor): The image tensor, assumed to be in CxHxW format.
    original_size (tuple): The original size of PIL image (width, height).

    Returns:
    torch.Tensor: The unpadded image tensor.
    """
    original_width, original_height = original_size
    current_height, current_width = tensor.shape[1:]

    original_aspect_ratio = original_width / original_height
    current_aspect_ratio = current_width / current_height

    if original_aspect_ratio > current_aspect_ratio:
        scale_factor = current_width / original_width
        new_height = int(original_height * scale_factor)
        padding = (current_height - new_height) // 2
        unpadded_tensor = tensor[:, padding:current_height - padding, :]
    else:
        scale_factor = current_height / original_height
        new_width = int(original_width * scale_factor)
        padding = (current_width - new_width) // 2
        unpadded_tensor = tensor[:, :, padding:current_width - padding]

    return unpadded_tensor


class HoloVLlava:
    """[vlprune] what the official methods read from ``self``."""

    def __init__(self, tower, projector, config):
        self._model = SimpleNamespace(get_vision_tower=lambda: tower, mm_projector=projector)
        self._tower, self.config = tower, config

    def get_model(self):
        return self._model

    def get_vision_tower(self):
        return self._tower

    # image_attentions
    def encode_images(self, images):
        image_features,image_attentions = self.get_model().get_vision_tower()(images)
        image_attentions = image_attentions.mean(dim=1).float()
        image_features = self.get_model().mm_projector(image_features)
        return image_features, image_attentions

    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels,
        images, image_sizes=None
    ):
        vision_tower = self.get_vision_tower()
        if vision_tower is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        if type(images) is list or images.ndim == 5:
            if type(images) is list:
                images = [x.unsqueeze(0) if x.ndim == 3 else x for x in images]
            concat_images = torch.cat([image for image in images], dim=0)
            image_features, image_attns = self.encode_images(concat_images)
            split_sizes = [image.shape[0] for image in images]
            image_features = torch.split(image_features, split_sizes, dim=0)
            image_attns = torch.split(image_attns, split_sizes, dim=0)
            
            mm_patch_merge_type = getattr(self.config, 'mm_patch_merge_type', 'flat')
            image_aspect_ratio = getattr(self.config, 'image_aspect_ratio', 'square')
            if mm_patch_merge_type == 'flat':
                image_features = [x.flatten(0, 1) for x in image_features]
                image_attns = [x.flatten(0, 1) for x in image_attns]
            elif mm_patch_merge_type.startswith('spatial'):
                new_image_features,new_image_attns = [],[]
                for image_idx, (image_feature, image_attn) in enumerate(zip(image_features, image_attns)):
                    if image_feature.shape[0] > 1:
                        base_image_feature = image_feature[0]
                        base_image_attn = image_attn[0]
                        image_feature = image_feature[1:]
                        image_attn = image_attn[1:]
                        height = width = self.get_vision_tower().num_patches_per_side
                        assert height * width == base_image_feature.shape[0]
                        if image_aspect_ratio == 'anyres':
                            num_patch_width, num_patch_height = get_anyres_image_grid_shape(image_sizes[image_idx], self.config.image_grid_pinpoints, self.get_vision_tower().config.image_size)
                            image_feature = image_feature.view(num_patch_height, num_patch_width, height, width, -1)
                            image_attn = image_attn.view(num_patch_height, num_patch_width, height, width)
                        else:
                            raise NotImplementedError
                        if 'unpad' in mm_patch_merge_type:
                            image_feature = image_feature.permute(4, 0, 2, 1, 3).contiguous()
                            image_attn = image_attn.permute(0, 2, 1, 3).contiguous().unsqueeze(0)
                            image_feature = image_feature.flatten(1, 2).flatten(2, 3)
                            image_attn = image_attn.flatten(1, 2).flatten(2, 3)
                            image_feature = unpad_image(image_feature, image_sizes[image_idx])
                            image_attn = unpad_image(image_attn, image_sizes[image_idx])
                            # image_feature = torch.cat((
                            #     image_feature,
                            #     self.model.image_newline[:, None, None].expand(*image_feature.shape[:-1], 1).to(image_feature.device)
                            # ), dim=-1)
                            # image_attn = torch.cat((
                            #     image_attn,
                            #     torch.zeros(*image_attn.shape[:-1], 1, dtype=torch.float()).to(image_attn.device)
                            # ), dim=-1)
                            image_feature = image_feature.flatten(1, 2).transpose(0, 1)
                            image_attn = image_attn.flatten(1, 2).squeeze(0)
                        else:
                            image_feature = image_feature.permute(0, 2, 1, 3, 4).contiguous()
                            image_attn = image_attn.permute(0, 2, 1, 3).contiguous()
                            image_feature = image_feature.flatten(0, 3)
                            image_attn = image_attn.flatten(0, 3)
                        image_feature = torch.cat((base_image_feature, image_feature), dim=0)
                        image_attn = torch.cat((base_image_attn, image_attn), dim=0)
                    else:
                        image_feature = image_feature[0]
                        image_attn = image_attn[0]
                        if 'unpad' in mm_patch_merge_type:
                            image_feature = image_feature
                            image_attn = image_attn
                            # image_feature = torch.cat((
                            #     image_feature,
                            #     self.model.image_newline[None].to(image_feature.device)
                            # ), dim=0)
                            # image_attn = torch.cat((
                            #     image_attn,
                            #     torch.zeros(1, dtype=torch.float()).to(image_attn.device)
                            # ), dim=0)
                    new_image_features.append(image_feature)
                    new_image_attns.append(image_attn)
                image_features = new_image_features
                image_attns = new_image_attns
            else:
                raise ValueError(f"Unexpected mm_patch_merge_type: {self.config.mm_patch_merge_type}")
        else:
            image_features, image_attns = self.encode_images(images)
        if type(image_features) is not torch.Tensor and len(image_features)>1:
            image_features = torch.cat(image_features, dim=0)
            image_attns = torch.cat(image_attns, dim=0)
        elif type(image_features) is not torch.Tensor:
            image_features = torch.cat(image_features, dim=0).unsqueeze(0)
            image_attns = torch.cat(image_attns, dim=0).unsqueeze(0)

        #token pruning
        image_features = HoloV(image_features, image_attns,num_patches=16, new_image_token_num=64)
        return image_features  # [vlprune]
