"""VisionDrop's official in-LLM stage (one sample), the oracle for vlprune's ``visiondrop`` LLM stages (test use only).

Source: https://github.com/Ruixxxx/VisionDrop, commit f7a944497d581aa79570f8f79e8ca91b5347a52f,
``llava/model/modeling_llama_visiondrop.py`` lines 1410-1411 and 1413-1470 (``LlamaModel.visiondrop_rank_drop``,
the inference branch of the per-sample loop), kept verbatim; what the loop reads became the function's
arguments: the rank layer's post-RoPE ``query_states``/``key_states`` of sample ``i`` (the official code computes
them with that layer's ``input_layernorm``, ``q_proj``/``k_proj`` and rotary embedding at the current
``position_ids``), its 4-D additive causal mask, the per-sample lists ``features``, ``image_tokens``,
``dominant_num``, ``contextual_num``, and ``image_index`` / ``head_dim`` / ``query_states`` (for its dtype). It returns the image span's new tokens
(``features_save``: dominant tokens in slot order, then the contextual tokens), the sample's new sequence and
``combined_indices``, ``topk_indices`` (dominant image slots) and ``target_indices`` (contextual targets, as
places among the non-dominant slots; so ``combined_indices`` mixes two index spaces: it only feeds the labels
and the all-True attention mask, harmless at inference). The encoder stage is VisionZip's code
(``llava/visionzip/clip_encoder.py``, identical to dvlab-research/VisionZip's but for whitespace), see
visionzip_official.py.

Licence of the copied code (the file's header; the repository is released under Apache 2.0):
# Copyright 2022 EleutherAI and the HuggingFace Inc. team. All rights reserved.
#
# This code is based on EleutherAI's GPT-NeoX library and the GPT-NeoX
# and OPT implementations in this library. It has been modified from its
# original forms to accommodate minor architectural differences compared
# to GPT-NeoX and OPT used by the Meta AI team that trained the model.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
import math

import torch
from torch import nn


def visiondrop_stage(cur_query_states, cur_key_states, cur_eager_attention_mask, features, image_tokens,
                     dominant_num, contextual_num, image_index, head_dim, query_states, i=0):
    """cur_query_states / cur_key_states (H, L, d) post-RoPE, cur_eager_attention_mask (1, L, L) additive,
    features: list of (L, D) per sample, query_states: the batch's (only its dtype is read). Returns (features_save, new_input_embeds, combined_indices, topk_indices, target_indices)."""
    if True:  # [vlprune] keeps the official indentation
        if True:
            if True:
                if True:
                    image_query_states = cur_query_states[:,image_index:image_index+image_tokens[i],:]
                    image_eager_attention_mask = cur_eager_attention_mask[:,image_index:image_index+image_tokens[i],:]
                # w/ causal mask
                # calculate attention map
                attn_weights = torch.matmul(image_query_states, cur_key_states.transpose(1, 2)) / math.sqrt(head_dim) #(num_head, image_token, seq_len)
                attn_weights = attn_weights + image_eager_attention_mask
                attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype) #(num_head, image_token, seq_len)

                attention_avg_head = torch.mean(attn_weights, dim=0) # ave across heads
                attention_avg_head = attention_avg_head[:,image_index:image_index+image_tokens[i]] # select image token as keys
                attention_avg_image = torch.mean(attention_avg_head, dim=0) # (576)


                metric = cur_key_states.mean(0)[image_index:image_index+image_tokens[i], :] #(image_token, head_dim)

                vision_tokens = features[i][image_index:image_index + image_tokens[i], :]

                topk_indices = attention_avg_image.topk(dominant_num[i]).indices


                mask = torch.ones_like(vision_tokens[:, 0], dtype=torch.bool, device=metric.device)
                mask[topk_indices] = False

                dominant_tokens = vision_tokens[~mask].view(dominant_num[i], vision_tokens.shape[1])

                ### Filter
                metric_filtered = metric[mask].view(vision_tokens.shape[0] - dominant_num[i], metric.shape[1])

                vision_tokens_filtered = vision_tokens[mask].view(vision_tokens.shape[0] - dominant_num[i], vision_tokens.shape[1])

                metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)

                ## Contextual Visual Tokens
                step = max(1, metric_normalized.shape[0] // contextual_num[i])
                target_indices = torch.arange(0, metric_normalized.shape[0], step, device=metric_normalized.device)[:contextual_num[i]]
                target_tokens = metric_normalized[target_indices, :]

                tokens_to_merge = metric_normalized[~torch.isin(torch.arange(metric_normalized.shape[0], device=metric_normalized.device),
                                              target_indices), :]
                similarity = torch.matmul(tokens_to_merge, target_tokens.T)
                assign_one_hot = torch.zeros(tokens_to_merge.shape[0], contextual_num[i],
                                             dtype=vision_tokens_filtered.dtype, device=metric_normalized.device)
                assign_one_hot.scatter_(1, similarity.argmax(dim=1, keepdim=True), 1)
                counts = assign_one_hot.sum(dim=0).clamp(min=1).unsqueeze(-1)
                hidden_to_merge = vision_tokens_filtered[~torch.isin(
                    torch.arange(vision_tokens_filtered.shape[0], device=vision_tokens_filtered.device),
                    target_indices), :]
                aggregated_hidden = torch.matmul(assign_one_hot.T, hidden_to_merge) / counts
                target_hidden = vision_tokens_filtered[target_indices, :]

                contextual_tokens = target_hidden + aggregated_hidden

                # Merge with target hidden states and concatenate
                features_save = torch.cat([dominant_tokens, contextual_tokens], dim=0).to(features[i].dtype)


                start_index = image_index + image_tokens[i]
                new_input_embeds = torch.cat(
                    [features[i][:image_index, :], features_save, features[i][start_index:, :]], dim=0)
                combined_indices = torch.cat([topk_indices, target_indices]).sort().values # w/ contextual
                return features_save, new_input_embeds, combined_indices, topk_indices, target_indices  # [vlprune] the results
