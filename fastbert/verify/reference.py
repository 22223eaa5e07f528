"""The oracle: a BERT-family forward pass (BERT, RoBERTa, XLM-R, CamemBERT, DistilBERT, ELECTRA, MPNet,
ModernBERT) in plain
PyTorch over EncoderWeights (fastbert/checkpoint/encoder_weights.py).

Readable first, fast never. It follows transformers.BertModel with attn_implementation="eager"
operation for operation (same order of additions, same mask value, scale applied after Q @ K^T), so
in fp32 the two agree to rounding (tests hold it within 1e-5 on the real all-MiniLM-L6-v2). Every
Triton path is tested against this module, and this module against transformers.

Default position ids follow transformers per family: arange(S) for every row for BERT, DistilBERT and
ELECTRA, even when a batch is left-padded (left-padded rows then see shifted positions); for the
RoBERTa family pad_token_id + 1 onwards over the non-pad ids of each row (fastbert.checkpoint.families). Pass
position_ids to do otherwise.

MPNet follows transformers.MPNetModel: its relative-position bias is looked up per (query column, key
column) pair of the padded batch from the bucket of each distance, as MPNetEncoder.compute_position_bias
does, not from the engine's per-distance table.
"""

import torch
import torch.nn.functional as F

from fastbert.checkpoint.activations import ACTIVATIONS
from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.encoder_weights import EncoderWeights, LayerWeights
from fastbert.checkpoint.families import default_position_ids, family_of
from fastbert.checkpoint.relative_position import relative_position_bucket
from fastbert.checkpoint.rotary import rotary_tables
from fastbert.checkpoint.weights import load_weights
from fastbert.engine.outputs import EncoderOutput


class ReferenceBertModel:
    """BERT-family encoder (+ pooler) in plain PyTorch over the weights fastbert.checkpoint.weights loads."""

    def __init__(self, config: BertConfig, weights: EncoderWeights):
        self.config = config
        self.weights = weights
        first = weights.embeddings.word
        self.dtype, self.device = first.dtype, first.device

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32, device="cpu") -> "ReferenceBertModel":
        config = BertConfig.from_pretrained(path)
        weights, _ = load_weights(path, config, dtype=dtype)
        return cls(config, weights.map_tensors(lambda tensor: tensor.to(device)))

    def __call__(self, *args, **kwargs) -> EncoderOutput:
        return self.forward(*args, **kwargs)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: [B, S] integers;
        position_ids: [B, S] or [S]. Returns hidden states in the weights' dtype."""
        input_ids, attention_mask, token_type_ids, position_ids = self._check_inputs(
            input_ids, attention_mask, token_type_ids, position_ids
        )
        cfg, embeddings = self.config, self.weights.embeddings

        x = embeddings.word[input_ids]
        if embeddings.token_type is not None:
            x = x + embeddings.token_type[token_type_ids]
        if embeddings.position is None:  # ModernBERT: rotary positions, pre-norm layers
            return self._pre_norm_forward(x, attention_mask, position_ids, output_hidden_states)
        x = x + embeddings.position[position_ids]
        x = F.layer_norm(x, (cfg.embedding_dim,), embeddings.norm.weight, embeddings.norm.bias, cfg.layer_norm_eps)
        if embeddings.project is not None:  # ELECTRA with embedding_size != hidden_size
            x = F.linear(x, embeddings.project.weight, embeddings.project.bias)

        # Additive key mask [B, 1, 1, S]: padding keys get the dtype's lowest value, as in transformers.
        mask = (1.0 - attention_mask[:, None, None, :].to(self.dtype)) * torch.finfo(self.dtype).min

        position_bias = self._position_bias(x.shape[1])
        hidden_states = [x]
        for layer in self.weights.layers:
            x = self._layer(x, mask, layer, position_bias)
            hidden_states.append(x)

        pooled = None
        if self.weights.pooler is not None:
            pooled = torch.tanh(F.linear(x[:, 0], self.weights.pooler.weight, self.weights.pooler.bias))
        return EncoderOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )

    def _position_bias(self, seq_len: int) -> torch.Tensor | None:
        """MPNet: [1, heads, S, S], the bias embedding at the bucket of each key column - query column."""
        if self.weights.relative_bias is None:
            return None
        family = family_of(self.config.model_type)
        columns = torch.arange(seq_len, device=self.device)
        buckets = relative_position_bucket(columns[None, :] - columns[:, None], family.relative_buckets,
                                           family.relative_max_distance)
        return self.weights.relative_bias[buckets].permute(2, 0, 1)[None]

    def _layer(self, x: torch.Tensor, mask: torch.Tensor, layer: LayerWeights,
               position_bias: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        B, S, H = x.shape
        nh, hd = cfg.num_attention_heads, cfg.head_dim

        qkv = F.linear(x, layer.qkv.weight, layer.qkv.bias)  # [B, S, 3H]: Q | K | V
        q, k, v = (t.view(B, S, nh, hd).transpose(1, 2) for t in qkv.split(H, dim=-1))  # [B, nh, S, hd]
        scores = torch.matmul(q, k.transpose(-1, -2)) * hd**-0.5
        if position_bias is not None:  # MPNet: after the scale, before the mask, as transformers adds it
            scores = scores + position_bias
        scores = scores + mask
        context = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, nh, S, hd]
        context = context.transpose(1, 2).reshape(B, S, H)

        attn = F.linear(context, layer.attn_out.weight, layer.attn_out.bias)
        x = F.layer_norm(attn + x, (H,), layer.attn_norm.weight, layer.attn_norm.bias, cfg.layer_norm_eps)

        # Keyed on hidden_act, not on the kernel's epilogue: "gelu_new" and "gelu_pytorch_tanh" are the same
        # function but round differently, and the oracle reproduces transformers to the last bit it can.
        activation = ACTIVATIONS[cfg.hidden_act].function
        h = activation(F.linear(x, layer.ffn_in.weight, layer.ffn_in.bias))
        h = F.linear(h, layer.ffn_out.weight, layer.ffn_out.bias)
        return F.layer_norm(h + x, (H,), layer.ffn_norm.weight, layer.ffn_norm.bias, cfg.layer_norm_eps)

    def _pre_norm_forward(self, x, attention_mask, position_ids, output_hidden_states) -> EncoderOutput:
        """ModernBERT after the token lookup, as transformers' ModernBertModel computes it (eager attention):
        embedding LayerNorm; per layer x + Wo(attention(rotary(Wqkv(attn_norm(x))))) (no attn_norm in layer
        0) and x + Wo(act(input) * gate) of mlp_norm(x); the final LayerNorm."""
        cfg, weights = self.config, self.weights
        norm = weights.embeddings.norm
        x = F.layer_norm(x, (cfg.hidden_size,), norm.weight, norm.bias, cfg.layer_norm_eps)
        lowest = torch.finfo(self.dtype).min
        real_keys = attention_mask[:, None, None, :].bool()  # [B, 1, 1, S]
        columns = torch.arange(x.shape[1], device=self.device)
        near = (columns[:, None] - columns[None, :]).abs() <= cfg.local_attention // 2
        masks = {"full_attention": real_keys, "sliding_attention": real_keys & near}
        masks = {kind: torch.zeros(m.shape, dtype=self.dtype, device=self.device).masked_fill(~m, lowest)
                 for kind, m in masks.items()}
        tables = rotary_tables(cfg, self.device)
        # cos, sin [B, S, head_dim], both halves repeated, in the run dtype as transformers casts them.
        rotary = {kind: tuple(torch.cat((t[position_ids],) * 2, dim=-1).to(self.dtype) for t in pair)
                  for kind, pair in tables.items()}
        hidden_states = [x]
        for layer, kind in zip(weights.layers, cfg.layer_types):
            x = self._pre_norm_layer(x, masks[kind], rotary[kind], layer)
            hidden_states.append(x)
        x = F.layer_norm(x, (cfg.hidden_size,), weights.final_norm.weight, weights.final_norm.bias,
                         cfg.layer_norm_eps)
        hidden_states[-1] = x
        return EncoderOutput(last_hidden_state=x, pooler_output=None,
                             hidden_states=tuple(hidden_states) if output_hidden_states else None)

    def _pre_norm_layer(self, x, mask, rotary, layer: LayerWeights) -> torch.Tensor:
        cfg = self.config
        B, S, H = x.shape
        nh, hd, eps = cfg.num_attention_heads, cfg.head_dim, cfg.layer_norm_eps
        h = x if layer.attn_norm is None else F.layer_norm(x, (H,), layer.attn_norm.weight, layer.attn_norm.bias, eps)
        qkv = F.linear(h, layer.qkv.weight, layer.qkv.bias).view(B, S, 3, nh, hd)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))  # [B, nh, S, hd]
        cos, sin = (t[:, None] for t in rotary)

        def rotate(t):
            t = t.float()
            return (t * cos + torch.cat((-t[..., hd // 2:], t[..., : hd // 2]), dim=-1) * sin).to(x.dtype)

        q, k = rotate(q), rotate(k)
        scores = torch.matmul(q, k.transpose(2, 3)) * hd**-0.5 + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(x.dtype)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(B, S, H)
        x = x + F.linear(context, layer.attn_out.weight, layer.attn_out.bias)

        h = F.layer_norm(x, (H,), layer.ffn_norm.weight, layer.ffn_norm.bias, eps)
        value, gate = F.linear(h, layer.ffn_in.weight, layer.ffn_in.bias).chunk(2, dim=-1)
        activation = ACTIVATIONS[cfg.hidden_act].function
        return x + F.linear(activation(value) * gate, layer.ffn_out.weight, layer.ffn_out.bias)

    def _check_inputs(self, input_ids, attention_mask, token_type_ids, position_ids):
        cfg = self.config
        input_ids = _index_tensor("input_ids", input_ids, self.device)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        B, S = input_ids.shape
        if S == 0:
            raise ValueError("input_ids has sequence length 0; every sequence needs at least one token")
        _check_range("input_ids", input_ids, cfg.vocab_size, "vocab_size")

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = _index_tensor("attention_mask", attention_mask, self.device, allow_bool=True)
        _check_shape("attention_mask", attention_mask, (B, S))

        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        token_type_ids = _index_tensor("token_type_ids", token_type_ids, self.device)
        _check_shape("token_type_ids", token_type_ids, (B, S))
        if cfg.type_vocab_size == 0:
            if token_type_ids.any():
                raise ValueError("token_type_ids must be all zero: the model has no token-type embedding")
        else:
            _check_range("token_type_ids", token_type_ids, cfg.type_vocab_size, "type_vocab_size")

        if position_ids is None:
            if S > cfg.max_sequence_length:
                raise ValueError(
                    f"sequence length {S} exceeds max_position_embeddings={cfg.max_position_embeddings}"
                    + (f" less the position offset (at most {cfg.max_sequence_length} tokens)"
                       if cfg.max_sequence_length != cfg.max_position_embeddings else "")
                )
            position_ids = default_position_ids(cfg, input_ids)
            if position_ids is None:
                position_ids = torch.arange(S, device=self.device)
        position_ids = _index_tensor("position_ids", position_ids, self.device)
        shape = tuple(position_ids.shape)
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.dim() != 2 or position_ids.shape[1] != S or position_ids.shape[0] not in (1, B):
            raise ValueError(f"position_ids must be [{S}], [1, {S}] or [{B}, {S}], got shape {shape}")
        _check_range("position_ids", position_ids, cfg.max_position_embeddings, "max_position_embeddings")
        return input_ids, attention_mask, token_type_ids, position_ids.expand(B, S)


def _index_tensor(name, t, device, allow_bool=False):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or (t.dtype == torch.bool and not allow_bool):
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.to(device)


def _check_shape(name, t, shape):
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have the shape of input_ids {list(shape)}, got {list(t.shape)}")


def _check_range(name, t, size, size_name):
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
        raise ValueError(
            f"{name} must lie in [0, {size_name}={size}), got values in [{int(t.min())}, {int(t.max())}]"
        )
