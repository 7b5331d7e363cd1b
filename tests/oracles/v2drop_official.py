"""V2Drop's official per-layer selection, the oracle for vlprune's ``v2drop`` stages (test use only).

Source: https://github.com/xuyang-liu16/V2Drop, commit 219e03ede8cf6a70d1534903fa238b13dd900bbb,
``llava/model/language_model/V2Drop.py`` lines 122-174 (``V2DropLlamaModel.forward``, the body of the decoder-layer
loop before the layer runs), kept verbatim, hard-coded LLaVA-1.5 constants included: 35 prompt tokens before the
image, 576 visual tokens, stages at layers {3, 17, 22} keeping 0.5, 0.5 and 0 (-> max(1, 0) = 1 token) of the
current visual tokens. What the loop reads became the function's arguments: ``self`` (its
``prev_hidden_states`` and ``image_token_amount_after_selection`` persist between layers, as on the model),
``decoder_layer`` (only ``self_attn.layer_idx`` is read), ``hidden_states`` (the layer's input), ``position_ids``,
``attention_mask``, ``use_cache`` and ``past_key_values``. It returns the layer's (pruned) input, position ids and
mask, and ``keep_indexs`` at a stage layer (else None).

Licence: the repository is released under the Apache License 2.0 (its ``LICENSE``); the file carries no header.
"""
import torch


def v2drop_step(self, decoder_layer, hidden_states, position_ids, attention_mask, use_cache=False,
                past_key_values=None):
    """One iteration of the official loop up to the layer call; ``self`` is any object with the two attributes."""
    keep_indexs = None  # [vlprune] reported to the test
    if True:  # [vlprune] keeps the official indentation
        if True:
            if True:
                current_hidden_states = hidden_states
                if current_hidden_states.size(1) > 576:
                    image_token_amount = 576
                else:
                    image_token_amount = 0
                if decoder_layer.self_attn.layer_idx == 0:
                    self.image_token_amount_after_selection = image_token_amount
                target_layer_indices = {3,17,22}
                if decoder_layer.self_attn.layer_idx in target_layer_indices and current_hidden_states.size(1) > 1 and self.image_token_amount_after_selection > 0:
                    device = hidden_states.device
                    candidate_indices = torch.arange(35, self.image_token_amount_after_selection + 35, device=device)
                    current_candidates = current_hidden_states[:, candidate_indices, :]
                    prev_candidates = self.prev_hidden_states[:, candidate_indices, :]

                    l2_diff_candidate = torch.norm(current_candidates - prev_candidates, p=2, dim=-1)[0]

                    current_layer = decoder_layer.self_attn.layer_idx
                    if current_layer == 3:
                        keep_ratio = 0.5
                    if current_layer == 17:
                        keep_ratio = 0.5
                    if current_layer == 22:
                        keep_ratio = 0

                    k = max(1, int(self.image_token_amount_after_selection * keep_ratio))
                    topk_values, topk_indices = torch.topk(l2_diff_candidate, k=k, largest=True)
                    selected_indices = candidate_indices[topk_indices]
                    current_seq_length = current_hidden_states.size(1)
                    keep_indexs = torch.cat((torch.arange(35, device=device), selected_indices, torch.arange(self.image_token_amount_after_selection + 35, current_seq_length, device=device)))
                    keep_indexs = keep_indexs.sort().values
                    current_hidden_states = current_hidden_states[:, keep_indexs, :]
                    position_ids = position_ids[:, keep_indexs]

                    if attention_mask is not None:
                        if attention_mask.ndim == 2:
                            attention_mask = attention_mask[:, keep_indexs]
                        else:
                            attention_mask = attention_mask[:, :, keep_indexs, :][..., keep_indexs]

                    if use_cache and past_key_values is not None:
                        layer_idx = decoder_layer.self_attn.layer_idx
                        if layer_idx < len(past_key_values):
                            past_key, past_value = past_key_values[layer_idx]
                        else:
                            past_key, past_value = None, None
                        if past_key is not None and past_value is not None:
                            past_key = past_key[:, :, keep_indexs, :]
                            past_value = past_value[:, :, keep_indexs, :]
                            past_key_values[layer_idx] = (past_key, past_value)

                    self.image_token_amount_after_selection = selected_indices.shape[0]
                self.prev_hidden_states = current_hidden_states
                hidden_states = current_hidden_states
    return hidden_states, position_ids, attention_mask, keep_indexs  # [vlprune] the results
