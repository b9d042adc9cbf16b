"""A Llama with bidirectional attention, in the shape of the recipe's ``llama_bidirectional_model.py``.

The tests copy this file into a tiny randomly initialised model folder whose ``config.json`` names it in
``auto_map``, so the folder loads only with ``trust_remote_code`` -- as ``nvidia/llama-nemotron-embed-1b-v2`` does.
Every token attends to every other non-padding token (no causal mask); rotary positions, RMSNorm and grouped-query
attention are Llama's own.
"""

import torch
from transformers import LlamaConfig, LlamaModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPast


class LlamaBidirectionalConfig(LlamaConfig):
    model_type = "llama_bidirec"

    def __init__(self, pooling="avg", **kwargs):
        self.pooling = pooling
        super().__init__(**kwargs)


class LlamaBidirectionalModel(LlamaModel):
    config_class = LlamaBidirectionalConfig

    def __init__(self, config):
        super().__init__(config)
        for layer in self.layers:
            layer.self_attn.is_causal = False

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden))
