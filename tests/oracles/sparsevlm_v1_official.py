"""SparseVLM's v1 selection code (LLaVA, the arXiv v1 paper's code: rank-adaptive counts, four pruning layers),
the oracle for vlprune's ``sparsevlm`` with ``version="v1"`` (test use only; nothing in vlprune/ imports it).

Source: https://github.com/Gumpest/SparseVLMs, commit b72c5d62fa7004c2f1440c75975981bddf6c66c7 (2024-10-22), kept
verbatim:
* ``llava/model/language_model/score.py`` lines 18-44 (imports and ``attn_postprocess_rank``: the rank rule);
* ``llava/model/language_model/utils.py`` lines 25-50 (``batch_index_select``) and 135-213 (``index_points``,
  ``cluster_and_merge``): the same code as at 26a5f48 but for blank lines and a comment, so imported from
  sparsevlm_official.py (kept verbatim there);
* ``llava/model/language_model/modelling_sparse_llama.py`` lines 215-220 (text raters, in
  ``LlamaDynamicvitModel.forward``) and 237-293 (one pruning layer: rank rule, policy, recycling, the updated
  ``position_ids``/``v_token_num``), at their original indentation inside the two wrapper functions below; what
  the forward loop reads became their arguments (``attn_logits``: the pruning layer's attention probabilities
  (B, H, L, L); ``layer_outputs``: its output; ``scale``/``bias``: the script's ``--scale``/``--bias``).
The only additions: the wrappers' ``def``/``return`` lines and the import of the utils. (``pruning_loc=[2, 6, 15,
19]`` is line 87.)

Licence: the repository is released under the Apache License 2.0 (its LICENSE file), Copyright (2024) Peking
University (the header of its files: "Licensed under the Apache License, Version 2.0 (the "License"); you may not
use this file except in compliance with the License. You may obtain a copy of the License at
http://www.apache.org/licenses/LICENSE-2.0").
"""
# fmt: off
# ruff: noqa


# ---- score.py lines 18-44 ----
import torch
import torch.nn as nn
import torch.nn.functional as F


def attn_postprocess_rank(self_attn_weights, v_token_start, v_token_num, text_token_start, t_token_idx, scale, bias):
    '''
    self_attn_weights: [B, H, L, L]
    '''
    self_attn_weights = self_attn_weights.mean(1) # B, L[Q], L[K]

    t_token_idx = t_token_idx[1] + text_token_start
    relation_vis_text = self_attn_weights[:, t_token_idx, v_token_start: v_token_start+v_token_num] # B, L2, L1

    rank = torch.linalg.matrix_rank(relation_vis_text.float()) # rank
    relation_vis_text = relation_vis_text.mean(1) # B, L1

    s_flag = True # layer needs sparsification or not
    if v_token_num - rank.item() != 0:
        mask = torch.zeros_like(relation_vis_text, dtype=bool)
        _, indices = torch.topk(relation_vis_text, min(int(rank.item() * scale + bias), v_token_num - 1), dim=1)
        mask[0][indices] = 1
    else:
        mask = torch.ones_like(relation_vis_text, dtype=bool)
        s_flag = False

    return mask, s_flag, relation_vis_text


# ---- utils.py lines 25-50 (batch_index_select) and 135-213 (index_points, cluster_and_merge) ----
# The same code at 26a5f48 (only blank lines and one trailing comment differ: `git diff b72c5d6 26a5f48 --
# llava/model/language_model/utils.py`), kept verbatim in sparsevlm_official.py: imported from there.
from .sparsevlm_official import batch_index_select, cluster_and_merge, index_points


def select_text_raters(hidden_states, v_token_start, text_token_start):
        # ---- modelling_sparse_llama.py lines 215-220 ----
        # Select text raters: Section 3.2.2
        v_t = hidden_states[:, v_token_start: text_token_start, :]
        t_t = hidden_states[:, text_token_start: , :]
        m_v_t = v_t @ t_t.transpose(1, 2) # [1, 576, 53]
        m_v_t = m_v_t.softmax(2).mean(1) # [1, 53]
        t_token_idx = torch.where(m_v_t > m_v_t.mean())
        return t_token_idx


def pruning_layer(attn_logits, layer_outputs, hidden_states, v_token_start, v_token_num, text_token_start, t_token_idx,
                  scale, bias, pre_prompt_length_list, image_shape, B, position_ids):
                # ---- modelling_sparse_llama.py lines 237-293 ----
                pred_score_vis, s_flag, relation_vis_text = attn_postprocess_rank(attn_logits, v_token_start, v_token_num, \
                    text_token_start, t_token_idx, scale=scale, bias=bias) # B, L_v

                policy = torch.ones(B, hidden_states.shape[1], dtype=hidden_states.dtype, device=hidden_states.device)
                policy[:, v_token_start:text_token_start] = pred_score_vis.type(dtype = hidden_states.dtype)

                for batch in range(len(pre_prompt_length_list)):
                    # keep pre prompt     
                    prompt_length = pre_prompt_length_list[batch]
                    policy[batch,:prompt_length,] = 1
                    # keep question
                    text_token_start = prompt_length + image_shape
                    policy[batch, text_token_start:,] = 1

                # Recycle: Section 3.3
                if s_flag:
                    total_sparse_token_idx = torch.where(policy == 0)[1].unsqueeze(0)  
                    total_sparse_token = batch_index_select(layer_outputs[0], total_sparse_token_idx) 
                    
                    merge_token_idx_stage1 = torch.where(pred_score_vis==0)[1]
                    merge_token_stage1 = relation_vis_text[0][merge_token_idx_stage1]
                    merge_token_num_stage1 = int(merge_token_idx_stage1.shape[0] * 0.3 ) + 1 # Top 30%
                    merge_token_stage2_idx = merge_token_stage1.topk(merge_token_num_stage1)[1]
                    
                    merge_token_stage2 = total_sparse_token[:,merge_token_stage2_idx,:]
                    cluster_num = int(merge_token_stage2.shape[1] / 10) + 1       # 1/10
                    if (cluster_num == 0) :
                        cluster_num = merge_token_stage2.shape[1]
                    
                    merge_sparse_token = cluster_and_merge(merge_token_stage2, cluster_num)  

                    select_token_idx = torch.where(policy == 1)[1].unsqueeze(0)  # B, L_new
                    select_token = batch_index_select(layer_outputs[0], select_token_idx)
                    select_vis_token_num = pred_score_vis.sum()
                    select_and_merge_token = torch.cat((select_token[:,:v_token_start+select_vis_token_num,:] ,
                            merge_sparse_token,
                            select_token[:,v_token_start+select_vis_token_num:,:])
                            ,dim=1
                    )

                    layer_outputs = (select_and_merge_token, layer_outputs[1])  # B, L, C
                    position_ids = position_ids[:, :len(select_token_idx[0])+cluster_num]
                    prev_decision = policy
                    # update
                    v_token_num = pred_score_vis.sum() + cluster_num # B == 1
                    # print(layer_idx, v_token_num)
                    text_token_start = v_token_start + v_token_num
                else:
                    select_token_idx = torch.where(policy == 1)[1].unsqueeze(0)  # B, L_new
                    layer_outputs = (batch_index_select(layer_outputs[0], select_token_idx), layer_outputs[1])  # B, L, C
                    position_ids = position_ids[:, :len(select_token_idx[0])]
                    prev_decision = policy
                    
                    # update
                    v_token_num = pred_score_vis.sum() # B == 1
                    # print(layer_idx, v_token_num)
                    text_token_start = v_token_start + v_token_num
                return (layer_outputs[0], pred_score_vis, s_flag, v_token_num, position_ids,
                        locals().get("merge_sparse_token"), locals().get("cluster_num", 0))
