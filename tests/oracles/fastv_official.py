"""FastV's official selection (in-place branch), the oracle for vlprune's ``fastv`` (test use only).

Source: https://github.com/pkunlp-icler/FastV, commit d1659729b5bf1be225e99ee15783deeea80f63b1,
``src/transformers/src/transformers/models/llama/modeling_llama.py`` lines 738-750 (``LlamaModel.forward``, the
``USE_FAST_V and FASTV_INPLACE`` branch at ``idx == AGG_LAYER``), kept verbatim; the loop variables it reads
(``layer_outputs`` of layer K-1 with its attention probabilities, ``SYS_LENGTH``, ``IMAGE_TOKEN_LENGTH``,
``ATTENTION_RANK``, ``seq_length_with_past``, ``device``) became the function's arguments, and it returns
``keep_indexs`` (the kept prompt positions, which the official code also uses as the new position ids).

Licence of the copied code (the file's header; Apache License 2.0):
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
import torch


def fastv_keep_indexs(layer_outputs, SYS_LENGTH, IMAGE_TOKEN_LENGTH, ATTENTION_RANK, seq_length_with_past, device):
    """layer_outputs: (hidden, attention probabilities (1, H, L, L)) of layer K-1 for ONE sample (the official
    code reads batch row 0). Returns the kept prompt positions, sorted."""
    if True:  # [vlprune] keeps the official indentation
        if True:
            if True:
                if True:
                    if True:
                        last_layer_attention = layer_outputs[1]
                        # compute average attention over different head
                        last_layer_attention_avg = torch.mean(last_layer_attention, dim=1)[0]
                        # generate new attention mask based on the average attention, sample the top ATTENTION_RANK tokens with highest attention
                        last_layer_attention_avg_last_tok = last_layer_attention_avg[-1]
                        # get the attention in image token
                        last_layer_attention_avg_last_tok_image = last_layer_attention_avg_last_tok[SYS_LENGTH:SYS_LENGTH+IMAGE_TOKEN_LENGTH]
                        # get the indexs of the top ATTENTION_RANK tokens
                        top_attention_rank_index = last_layer_attention_avg_last_tok_image.topk(ATTENTION_RANK).indices + SYS_LENGTH
                        # keep index
                        keep_indexs = torch.cat( (torch.arange(SYS_LENGTH,device=device), top_attention_rank_index, torch.arange(SYS_LENGTH+IMAGE_TOKEN_LENGTH,seq_length_with_past,device=device)))
                        # sort index
                        keep_indexs = keep_indexs.sort().values
                        return keep_indexs  # [vlprune] the result
