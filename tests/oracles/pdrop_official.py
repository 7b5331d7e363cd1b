"""PyramidDrop's official rank & drop of one sample, the oracle for vlprune's ``pdrop`` stages (test use only).

Source: https://github.com/Cooperx521/PyramidDrop, commit 6444f304aee4b7edcb022839fb9e8cd07859704a,
``llava/model/modeling_llama_pdrop.py`` lines 1365-1368, 1389-1392 and 1394-1410 (``LlamaModel.pdrop_rank_drop``,
the inference branch of the per-sample loop; the training branch, lines 1371-1388, and the labels / 2-D mask of
lines 1411-1412 are left out), kept verbatim.
What the loop reads became the function's arguments: the batch's post-RoPE ``query_states``/``key_states``
(the official code computes them with ``self.layers[rank_layer]``'s ``input_layernorm``, ``q_proj``/``k_proj`` and
rotary embedding at the current ``position_ids``: the NEXT layer's, on its input), its 4-D additive causal mask
``eager_attention_mask``, the per-sample lists ``features``, ``image_tokens``
(current visual tokens, ``int(n * ratio_list[stage])``) and ``keep_length`` (``int(n * ratio_list[stage + 1])``),
``image_index``, ``head_dim``, and ``self`` (only ``self.prompt_len`` is read: the text tokens of the prompt, so
that ``prompt_total_len - 1`` is the last instruction token). It returns the kept image positions
(``top_rank_index``, sorted) and the sample's new sequence. Official ``--layer_list [8,16,24]
--image_token_ratio_list [0.5,0.25,0.125]`` (``scripts/v1_5/pdrop_eval/*.sh``), with 1.0 inserted in front by
``llava/eval/model_vqa_loader.py`` line 96.

Licence of the copied code (the file's header; the repository is released under the MIT licence, "Copyright (c)
2024 Xing Long"):
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


def pdrop_stage(self, key_states, query_states, eager_attention_mask, features, image_tokens, keep_length, image_index,
                head_dim, i=0):
    """key_states / query_states (B, H, L, d) post-RoPE, eager_attention_mask (B, 1, L, L) additive; features: list
    of (L, D) per sample. Returns (top_rank_index, new_input_embeds)."""
    if True:  # [vlprune] keeps the official indentation
        if True:
            if True:
                # obtain current states
                cur_key_states = key_states[i]
                cur_query_states = query_states[i] 
                cur_eager_attention_mask = eager_attention_mask[i] 
                if False:  # [vlprune] the training branch (lines 1371-1388) is left out
                    pass
                else:
                    prompt_total_len = self.prompt_len[i] + image_tokens[i]
                    text_query_states = cur_query_states[:,prompt_total_len-1,:].unsqueeze(1)  
                    text_eager_attention_mask = cur_eager_attention_mask[:,prompt_total_len-1,:].unsqueeze(1)
                
                # calculate attention map
                attn_weights = torch.matmul(text_query_states, cur_key_states.transpose(1, 2)) / math.sqrt(head_dim) #(num_head, text_token,seq_len)
                attn_weights = attn_weights + text_eager_attention_mask
                attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype) #(num_head, text_token,seq_len)
                
                attention_avg_head = torch.mean(attn_weights, dim=0) # ave across heads
                attention_avg_head = attention_avg_head[:,image_index:image_index+image_tokens[i]] # select image token as keys
                attention_avg_text = torch.mean(attention_avg_head, dim=0) # (576)

                
                # rank and drop by attention score
                top_rank_index = attention_avg_text.topk(keep_length[i]).indices
                top_rank_index = top_rank_index + image_index  
                top_rank_index= top_rank_index.sort().values  

                start_index = image_index + image_tokens[i]
                new_input_embeds = torch.cat([features[i][ :image_index, :] ,features[i][ top_rank_index, :], features[i][start_index:, :]], dim=0)
                return top_rank_index, new_input_embeds  # [vlprune] the results
