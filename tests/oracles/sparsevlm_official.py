"""SparseVLM's official selection code (LLaVA, default v1.5 mode ``USE_VERSION=1_0``), the oracle for vlprune's
``sparsevlm`` stages (test use only; nothing in vlprune/ imports it).

Source: https://github.com/Gumpest/SparseVLMs, commit 26a5f48813c46cd1c7364160354e7fdd3febaa67, kept verbatim:
* ``llava/model/language_model/score.py`` lines 1-46 (the schedule and ``attn_postprocess_topk``);
* ``llava/model/language_model/utils.py`` lines 20-45 (``batch_index_select``) and 159-239 (``index_points``,
  ``cluster_and_merge``), the ``def`` line of ``index_points`` (158) included;
* ``llava/model/language_model/modelling_sparse_llama.py`` lines 199-204 (text raters, in
  ``LlamaDynamicvitModel.forward``) and 259-301 (one pruning layer: rating, policy, recycling), at their original
  indentation inside the two wrapper functions below; what the forward loop reads became their arguments
  (``attn_logits``: the pruning layer's attention probabilities (B, H, L, L); ``layer_outputs``: its output).
The only additions: the wrappers' ``def``/``return`` lines, and ``ein`` (einops is no dependency of vlprune): the
two ``rearrange`` patterns ``cluster_and_merge`` uses, as unsqueezes.

Licence: the repository is released under the Apache License 2.0 (its LICENSE file), Copyright (2024) Peking
University (the header of its files: "Licensed under the Apache License, Version 2.0 (the "License"); you may not
use this file except in compliance with the License. You may obtain a copy of the License at
http://www.apache.org/licenses/LICENSE-2.0").
"""
# fmt: off
# ruff: noqa


class ein:  # einops.rearrange for the two patterns of cluster_and_merge
    @staticmethod
    def rearrange(x, pattern):
        return {"b l r -> b l () r": x.unsqueeze(2), "b l r -> b () l r": x.unsqueeze(1)}[pattern]


# ---- score.py lines 1-46 ----
import torch
import os

VERSION = os.getenv("USE_VERSION", "1_0")
V2_0 = VERSION == "2_0"

RETAIN_TOKN = int(os.getenv("RETAIN_TOKN", "192"))

layer_dict = {2:0,6:1,15:2}

sparse_token_list_192 = [300, 200, 110] if not V2_0 else [300, 200, 118]       # 2*576  4*300 10*200  16*110
sparse_token_list_128 = [303, 110, 36] if not V2_0 else [238, 108, 60]
sparse_token_list_96 = [238, 48, 26] if not V2_0 else [246, 54, 28]
sparse_token_list_64 = [66, 30, 17] if not V2_0 else [66, 34, 20]

sparse_token_dict = {
    192: sparse_token_list_192,
    128: sparse_token_list_128,
    96 : sparse_token_list_96,
    64 : sparse_token_list_64
}

def attn_postprocess_topk(self_attn_weights, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx):
    '''
    self_attn_weights: [B, H, L, L]
    '''
    self_attn_weights = self_attn_weights.mean(1) # B, L[Q], L[K]

    t_token_idx = t_token_idx[1] + text_token_start
    relation_vis_text = self_attn_weights[:, t_token_idx , v_token_start: v_token_start+v_token_num] # B, L2, L1

    relation_vis_text = relation_vis_text.mean(1) # B, L1

    relation_vis = relation_vis_text
    s_flag = True       # s_flag controls whether token merge is needed.

    sparse_token_list = sparse_token_dict[RETAIN_TOKN]

    if v_token_num != 0:
        mask = torch.zeros_like(relation_vis, dtype=bool)
        _, indices = torch.topk(relation_vis, min(sparse_token_list[layer_dict[layer_idx]], v_token_num - 1), dim=1)
        mask[0][indices] = 1
    else:
        mask = torch.ones_like(relation_vis_text, dtype=bool)
        s_flag = False
    return mask, s_flag, relation_vis_text


# ---- utils.py lines 20-45 ----
def batch_index_select(x, idx):

    if len(x.size()) == 4:
        B, H, N, C = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N, H, C)[idx.reshape(-1)].reshape(B, H, N_new, C)
        return out
    elif len(x.size()) == 3:
        # in this condition
        B, N, C = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N, C)[idx.reshape(-1)].reshape(B, N_new, C)
        return out
    elif len(x.size()) == 2:
        B, N = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N)[idx.reshape(-1)].reshape(B, N_new)
        return out
    else:
        raise NotImplementedError


# ---- utils.py lines 158-239 ----

def index_points(points, idx):
    """Sample features following the index.
    Returns:
        new_points:, indexed points data, [B, S, C]

    Args:
        points: input points data, [B, N, C]
        idx: sample index data, [B, S]
    """
    device = points.device
    B = points.shape[0]
    view_shape = list(idx.shape)
    view_shape[1:] = [1] * (len(view_shape) - 1)
    repeat_shape = list(idx.shape)
    repeat_shape[0] = 1
    batch_indices = torch.arange(B, dtype=torch.long).to(device).view(view_shape).repeat(repeat_shape)
    new_points = points[batch_indices, idx, :]
    return new_points


def cluster_and_merge(x, cluster_num):
    
    B, N, C = x.shape

    x1 = ein.rearrange(x, "b l r -> b l () r")
    x2 = ein.rearrange(x, "b l r -> b () l r")
    distance = (x1 - x2).norm(dim=-1, p=2)
    dist_matrix = distance / (C ** 0.5)        
    # get local density
    dist_nearest, index_nearest = torch.topk(dist_matrix, k=cluster_num, dim=-1, largest=False)
    density = (-(dist_nearest ** 2).mean(dim=-1)).exp()
    # add a little noise to ensure no tokens have the same density.
    density = density + torch.rand(
        density.shape, device=density.device, dtype=density.dtype) * 1e-6

    # get distance indicator
    mask = density[:, None, :] > density[:, :, None]
    mask = mask.type(x.dtype)
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist, index_parent = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)

    # select clustering center according to score
    score = dist * density
    _, index_down = torch.topk(score, k=cluster_num, dim=-1)        

    # assign tokens to the nearest center
    dist_matrix = index_points(dist_matrix, index_down)     

    idx_cluster = dist_matrix.argmin(dim=1)    

    # make sure cluster center merge to itself 
    idx_batch = torch.arange(B, device=x.device)[:, None].expand(B, cluster_num)
    idx_tmp = torch.arange(cluster_num, device=x.device)[None, :].expand(B, cluster_num)
    idx_cluster[idx_batch.reshape(-1), index_down.reshape(-1)] = idx_tmp.reshape(-1)

    # merge tokens

    B, N, C = x.shape
    device = dist_matrix.device
    idx_token = torch.arange(N)[None, :].repeat(B, 1).to(device)
    agg_weight = x.new_ones(B, N, 1)
    
    token_weight = x.new_ones(B, N, 1)
    
    idx_batch = torch.arange(B, device=x.device)[:, None]
    idx = idx_cluster + idx_batch * cluster_num     

    all_weight = token_weight.new_zeros(B * cluster_num, 1)
    all_weight.index_add_(dim=0, index=idx.reshape(B * N),      
                            source=token_weight.reshape(B * N, 1))      
    all_weight = all_weight + 1e-6
    norm_weight = token_weight / all_weight[idx]       

    # average token features
    x_merged = x.new_zeros(B * cluster_num, C)
    source = x * norm_weight
    x_merged.index_add_(dim=0, index=idx.reshape(B * N),        
                        source=source.reshape(B * N, C).type(x.dtype))
    x_merged = x_merged.reshape(B, cluster_num, C)
    
    return x_merged

def select_text_raters(hidden_states, pre_prompt_length_list, v_token_start, text_token_start):
        # ---- modelling_sparse_llama.py lines 199-204 ----
        if (len(pre_prompt_length_list) != 0 and hidden_states.shape[1] != 1):
            v_t = hidden_states[:, v_token_start: text_token_start, :]
            t_t = hidden_states[:, text_token_start: , :]
            m_v_t = v_t @ t_t.transpose(1, 2) # [1, 576, 53]
            m_v_t = m_v_t.softmax(2).mean(1) # [1, 53]
            t_token_idx = torch.where(m_v_t > m_v_t.mean())
        return t_token_idx


def pruning_layer(attn_logits, layer_outputs, hidden_states, v_token_start, v_token_num, text_token_start, t_token_idx,
                  layer_idx, pre_prompt_length_list, image_shape, B):
                    # ---- modelling_sparse_llama.py lines 259-301 ----
                    pred_score_vis, s_flag, relation_vis_text = attn_postprocess_topk(attn_logits, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx) # B, L_v
                    policy = torch.ones(B, hidden_states.shape[1], dtype=hidden_states.dtype, device=hidden_states.device)
                    policy[:, v_token_start:text_token_start] = pred_score_vis.type(dtype = hidden_states.dtype)

                    for batch in range(len(pre_prompt_length_list)):
                        # keep pre prompt     
                        prompt_length = pre_prompt_length_list[batch]
                        policy[batch,:prompt_length,] = 1
                        # keep question
                        text_token_start = prompt_length + image_shape
                        policy[batch, text_token_start:,] = 1

                    total_sparse_token_idx = torch.where(policy == 0)[1].unsqueeze(0)  
                    # merge and cluster
                    if V2_0:
                        s_flag = False # idea1: Cancel Merge
                    if s_flag and total_sparse_token_idx.shape[1]>0:

                        total_sparse_token_idx = torch.where(policy == 0)[1].unsqueeze(0)  
                        total_sparse_token = batch_index_select(layer_outputs[0], total_sparse_token_idx) 
                        
                        merge_token_idx_stage1 = torch.where(pred_score_vis==0)[1]
                        merge_token_stage1 = relation_vis_text[0][merge_token_idx_stage1]
                        merge_token_num_stage1 = int(merge_token_idx_stage1.shape[0] * 0.3 ) + 1 # Top 30%
                        merge_token_stage2_idx = merge_token_stage1.topk(merge_token_num_stage1)[1]
                       
                        merge_token_stage2 = total_sparse_token[:,merge_token_stage2_idx,:]
                        cluster_num = int(merge_token_stage2.shape[1] / 10) + 1       
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
                    return layer_outputs[0], pred_score_vis, merge_sparse_token, cluster_num
