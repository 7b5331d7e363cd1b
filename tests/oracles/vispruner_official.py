"""VisPruner's official selection, the oracle for vlprune.methods.vispruner (test use only).

Source: https://github.com/Theia-4869/VisPruner, commit aefa01adc7c7ce6334e880c88225e90cede760d1,
``llava/model/llava_arch.py`` lines 141-186 (``LlavaMetaForCausalLM.encode_images``), kept verbatim except:
the method became a function of plain tensors (the vision tower's outputs, T and r are arguments instead of
``self.get_model().get_vision_tower()(images, output_attentions=True)``, ``self.get_visual_token_num()`` and
``self.get_important_ratio()``), and the projector call at the end was removed (it returns the index masks).

Licence of the copied code (the file's header, Apache License 2.0; the repository is released under Apache 2.0):
#    Copyright 2023 Haotian Liu
#
#    Licensed under the Apache License, Version 2.0 (the "License");
#    you may not use this file except in compliance with the License.
#    You may obtain a copy of the License at
#
#        http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS,
#    WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
#    See the License for the specific language governing permissions and
#    limitations under the License.
"""
import torch


def encode_images(image_features, image_attentions, visual_token_num, important_ratio):
    if True:  # [vlprune] keeps the official indentation
        
        B, N, C = image_features.shape
        device = image_features.device
        index_masks = torch.ones(B, N, dtype=torch.bool, device=device)

        important_token_num = int(visual_token_num * important_ratio) # T_imp = T * r
        diverse_token_num = visual_token_num - important_token_num # T_div = T * (1 - r)

        # [VisPruner] Select important tokens using attention scores
        image_attentions = image_attentions.mean(dim=1) # (B, N)
        token_indices = image_attentions.argsort(dim=-1, descending=True) # (B, N)
        important_indices = token_indices[:, :important_token_num] # (B, T_imp)
        residual_indices = token_indices[:, important_token_num:] # (B, N - T_imp)

        # [VisPruner] Remove duplicate tokens by iterative matching and pruning
        image_normalized = image_features / image_features.norm(dim=-1, keepdim=True) # (B, N, C)
        while diverse_token_num > 0:
            R = residual_indices.shape[1]
            r = min(8, R - diverse_token_num)
            if r <= 0:
                break

            residual_tokens = image_normalized[torch.arange(B).unsqueeze(-1).expand(-1, R), residual_indices] # (B, R, C)
            a, b = residual_tokens[..., ::2, :], residual_tokens[..., 1::2, :] # (B, R // 2, C)
            scores = a @ b.transpose(-1, -2) # (B, R // 2, R // 2)
            scores = scores.max(dim=-1).values # (B, R // 2)

            distinct_indices = scores.argsort(dim=-1, descending=True)[:, r:] # (B, R // 2 - r)
            residual_indices = torch.cat([
                residual_indices[..., ::2][torch.arange(B).unsqueeze(-1).expand(-1, R // 2 - r), distinct_indices], 
                residual_indices[..., 1::2]
            ], dim=-1) # (B, R - r)

        if diverse_token_num > 0:
            selected_indices = torch.cat([important_indices, residual_indices], dim=-1) # (B, T)
        else:
            selected_indices = important_indices # (B, T)
        index_masks = torch.zeros(B, N, dtype=torch.bool, device=device)
        index_masks.scatter_(1, selected_indices, True)

        return index_masks  # [vlprune] the projector call removed
