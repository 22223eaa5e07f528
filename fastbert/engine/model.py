"""Encoder: a padding-free BERT-family encoder (BERT, RoBERTa, XLM-R, CamemBERT, DistilBERT, ELECTRA, MPNet,
ModernBERT: fastbert/checkpoint/families.py).

The data path of one forward pass, top to bottom in `forward`:
tokens -> validate and pack the real tokens once (positions by the family's rule) -> embeddings of real
tokens only (ELECTRA: then widened by its projection GEMM) -> layers on packed [T, H] tokens (7 kernel
launches each, residual adds fused into the GEMMs; more where a GEMM splits K at small token counts or
cuBLAS serves it, see triton_ops.TritonOps; nothing else) -> scatter back to [B, S, H] once (padded
positions are zero) -> pooler on each sequence's first real token. MPNet's relative-position bias is one
table built at load (prepare_weights) that every layer's attention adds to its scores.
Pre-norm families (ModernBERT) run their own layer loop, `_pre_norm_layers`: LayerNorm before attention and
before the GeGLU FFN, rotary q/k and a window per layer type inside attention, a final LayerNorm, no pooler."""

import dataclasses
import math
from pathlib import Path

import torch

from fastbert.checkpoint.config import BertConfig
from fastbert.checkpoint.encoder_weights import EncoderWeights, Linear
from fastbert.checkpoint.families import family_of
from fastbert.checkpoint.hub import resolve_model_path
from fastbert.checkpoint.relative_position import position_bias_table
from fastbert.checkpoint.rotary import rotary_tables
from fastbert.checkpoint.weights import load_weights

from .backends import make_ops
from .graphs import GraphCache
from .outputs import EncoderOutput
from .packing import pack_inputs
from .runtime import resolve_device_dtype_backend


def prepare_weights(weights: EncoderWeights, config, dtype, device) -> EncoderWeights:
    """Fold the softmax scale 1/sqrt(head_dim) into the Q rows of every fused QKV projection, so attention
    needs no scaling of its own; cast every tensor to the run dtype, contiguous on the device. MPNet's
    relative-position bias becomes its float32 [heads, 2R+1] table, from the weights as given (before the
    cast), on the device whose logarithm transformers' buckets would use there."""
    scale = 1.0 / math.sqrt(config.head_dim)
    hidden = config.hidden_size

    def fold_scale(qkv: Linear) -> Linear:
        # Scaled in fp32, then cast with everything else: the Q rows round once.
        weight, bias = (t.detach().to(device=device, dtype=torch.float32, copy=True) if t is not None else None
                        for t in (qkv.weight, qkv.bias))
        weight[:hidden] *= scale
        if bias is not None:
            bias[:hidden] *= scale
        return Linear(weight, bias)

    def place(tensor):
        # .to() returns the tensor itself when nothing changes, so weights already in the right dtype
        # and place (a live transformers model's) are shared, not copied.
        tensor = tensor.detach().to(device=device, dtype=dtype).contiguous()
        # ...unless misaligned: a safetensors file mapped on the CPU aligns tensors to 8 bytes only, and
        # TMA (kernels/linear_persistent.py) and vectorised loads want 16.
        return tensor.clone() if tensor.data_ptr() % 16 else tensor

    layers = tuple(dataclasses.replace(layer, qkv=fold_scale(layer.qkv)) for layer in weights.layers)
    placed = dataclasses.replace(weights, layers=layers, position_bias=None).map_tensors(place)
    if weights.relative_bias is None:
        return placed
    family = family_of(config.model_type)
    table = position_bias_table(weights.relative_bias.to(device), family.relative_buckets,
                                family.relative_max_distance)
    return dataclasses.replace(placed, position_bias=table)


def _attention_args(config, device) -> list[dict]:
    """Each layer's ops.attention keywords: {} for BERT's absolute positions; for rotary families the
    layer type's window (None: global) and its (cos, sin) tables, shared by the layers of one type."""
    if config.layer_types is None:
        return [{} for _ in range(config.num_hidden_layers)]
    tables = rotary_tables(config, device)
    return [{"window": config.attention_window(i), "rotary": tables[layer_type]}
            for i, layer_type in enumerate(config.layer_types)]


class Encoder:
    """BERT-family encoder on packed variable-length tokens. See `from_pretrained`."""

    def __init__(self, config, weights, *, device=None, dtype=None, backend="auto", cuda_graphs=None,
                 gemm="auto", tokenizer=None, path=None):
        self.config = config
        self.device, self.dtype, self.backend = resolve_device_dtype_backend(device, dtype, backend)
        self.weights = prepare_weights(weights, config, self.dtype, self.device)
        self.ops = make_ops(self.backend, self.device, config, gemm)
        self.activation = config.activation
        self._pre_norm = family_of(config.model_type).layer_style == "pre_norm"
        # Per layer: the keyword arguments of its attention (a window, rotary tables), built once.
        self._attention_args = _attention_args(config, self.device)
        self.tokenizer = tokenizer
        self.path = Path(path) if path is not None else None
        # CUDA graphs remove the host's per-launch cost (tens of microseconds per Triton launch, which
        # otherwise dominates small batches); on by default for the triton backend on CUDA.
        if cuda_graphs is None:
            cuda_graphs = self.backend == "triton" and self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a CUDA device")
        self._graphs = GraphCache(self._encode_packed, self._encode_tokens, self.device) if cuda_graphs else None

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None, backend="auto", cuda_graphs=None, gemm="auto"):
        """Load a checkpoint folder of any supported model_type (config.json + model.safetensors or
        pytorch_model.bin; task-model checkpoints too, their heads set aside), or a Hugging Face Hub id
        ("org/name", fetched through the Hugging Face cache: fastbert/checkpoint/hub.py).
        Defaults: CUDA with fp16 when a GPU is present, else CPU with fp32; backend 'auto' picks
        triton on CUDA and torch on CPU ('triton' on CPU runs through Triton's interpreter); cuda_graphs
        (default: on for triton on CUDA) replays captured CUDA graphs, one per bucket of similar batch
        shapes (fastbert/engine/graphs.py), once a bucket has been seen twice;
        gemm (triton backend on CUDA) picks each projection's GEMM: 'auto' times fastbert's Triton kernels
        (on sm_90+ also the TMA persistent one) against cuBLAS once per shape and keeps the fastest
        (fastbert/engine/gemm.py); 'triton', 'triton_persistent' or 'cublas' fix it."""
        path = resolve_model_path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder not found: {path} is a file, not a checkpoint folder")
        config = BertConfig.from_pretrained(path)
        weights, _heads = load_weights(path, config)
        return cls(config, weights, device=device, dtype=dtype, backend=backend, cuda_graphs=cuda_graphs,
                   gemm=gemm, path=path)

    def get_tokenizer(self):
        """The tokenizer of the checkpoint folder this model was loaded from (loaded on first use)."""
        if self.tokenizer is None:
            if self.path is None:
                raise ValueError("this model has no tokenizer: load it with from_pretrained(folder), or set .tokenizer")
            from fastbert.checkpoint.tokenizer import Tokenizer

            self.tokenizer = Tokenizer.from_pretrained(self.path)
        return self.tokenizer

    def __repr__(self):
        c = self.config
        return (f"{type(self).__name__}(model_type={c.model_type!r}, layers={c.num_hidden_layers}, "
                f"hidden={c.hidden_size}, heads={c.num_attention_heads}, backend={self.backend!r}, "
                f"device={str(self.device)!r}, dtype={self.dtype})")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # no_grad rather than inference_mode: outputs stay ordinary tensors that a transformers head
    # (after fastbert.optimize) may still use in an autograd-enabled context.
    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states=False):
        """input_ids [B, S] (+ optional attention_mask, token_type_ids, position_ids [B, S]) ->
        EncoderOutput(last_hidden_state [B, S, H], pooler_output [B, H], hidden_states).
        Padded positions of every returned hidden state are zero."""
        if position_ids is not None and self.config.layer_types is not None:
            raise ValueError(f"model_type={self.config.model_type!r} takes no position_ids: its rotary embedding "
                             "rotates each token by its index within its sequence")
        packing, ids, positions, types = pack_inputs(
            self.config, self.device, input_ids, attention_mask, token_type_ids, position_ids)
        return self.forward_packed(packing, ids, positions, types, output_hidden_states)

    @torch.no_grad()
    def forward_packed(self, packing, ids, positions, types, output_hidden_states=False):
        """forward() on inputs already validated and packed by fastbert.engine.packing.pack_inputs (on this
        model's device)."""
        if packing.num_tokens == 0:
            return self._empty_output(packing, output_hidden_states)
        run = self._graphs if self._graphs is not None else self._encode_packed
        last_hidden_state, pooled, hidden_states = run(packing, ids, positions, types, output_hidden_states)
        return EncoderOutput(last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=hidden_states)

    @torch.no_grad()
    def forward_tokens(self, packing, ids, positions, types):
        """The last hidden state of inputs packed by fastbert.engine.packing.pack_inputs, left packed: [T, H],
        sequence b at rows packing.offsets[b]:packing.offsets[b + 1]. Pooling reads the real tokens
        directly, with no scatter to [B, S, H] and gather back (CUDA graphs replay here too)."""
        if packing.num_tokens == 0:
            return torch.zeros(0, self.config.hidden_size, dtype=self.dtype, device=self.device)
        if self._graphs is not None:
            return self._graphs(packing, ids, positions, types, False, unpack=False)[0]
        return self._encode_tokens(packing, ids, positions, types, False)[0]

    def _encode_packed(self, packing, ids, positions, types, output_hidden_states):
        """Packed token ids [T] -> (last_hidden_state [B, S, H], pooler_output [B, H], hidden_states)."""
        hidden, pooled, states = self._encode_tokens(packing, ids, positions, types, output_hidden_states)
        states = tuple(packing.unpack(s) for s in states) if output_hidden_states else None
        return packing.unpack(hidden), pooled, states

    def _encode_tokens(self, packing, ids, positions, types, output_hidden_states):
        """Packed token ids [T] -> (last hidden [T, H], pooler_output [B, H], every layer's [T, H] or None).
        Only kernel launches and views between the embeddings and the pooler."""
        config, weights, ops = self.config, self.weights, self.ops
        eps, tokens = config.layer_norm_eps, packing.num_tokens
        heads, head_dim = config.num_attention_heads, config.head_dim
        packing.upload_offsets()  # the sequence offsets the kernels read, queued ahead of them
        hidden = ops.embeddings(ids, positions, types, weights.embeddings, eps)
        if weights.embeddings.project is not None:  # ELECTRA: narrower embeddings, widened after the norm
            hidden = ops.linear(hidden, weights.embeddings.project)
        packed_states = [hidden] if output_hidden_states else None
        # MPNet's relative-position bias (the same table for every layer); other families pass nothing.
        attention_options = {} if weights.position_bias is None else {"position_bias": weights.position_bias}
        if self._pre_norm:  # ModernBERT
            hidden = self._pre_norm_layers(hidden, packing, packed_states)
        post_norm_layers = () if self._pre_norm else weights.layers
        for layer in post_norm_layers:
            qkv = ops.linear(hidden, layer.qkv)
            # Q, K and V are strided views of the one QKV output: no split, transpose or copy.
            q, k, v = qkv.view(tokens, 3, heads, head_dim).unbind(1)
            context = ops.attention(q, k, v, packing, **attention_options).view(tokens, config.hidden_size)
            # The residual adds run in the GEMM epilogues, so each LayerNorm reads one tensor.
            attended = ops.linear(context, layer.attn_out, residual=hidden)
            hidden = ops.layer_norm(attended, layer.attn_norm, eps)
            intermediate = ops.linear(hidden, layer.ffn_in, self.activation)
            projected = ops.linear(intermediate, layer.ffn_out, residual=hidden)
            hidden = ops.layer_norm(projected, layer.ffn_norm, eps)
            if output_hidden_states:
                packed_states.append(hidden)

        pooled = None
        if weights.pooler is not None:
            # BERT's pooler reads [CLS]: the first *real* token, so left-padded rows pool correctly too.
            first = packing.first_tokens(hidden)
            pooled = torch.tanh(torch.nn.functional.linear(first, weights.pooler.weight, weights.pooler.bias))
        return hidden, pooled, tuple(packed_states) if output_hidden_states else None

    def _pre_norm_layers(self, hidden, packing, packed_states):
        """ModernBERT's layers on packed [T, H] tokens: LayerNorm before attention (none in layer 0) and
        before the GeGLU FFN, each residual add fused into the GEMM closing its branch; then the final
        LayerNorm. Each layer's attention is global or windowed, with its own rotary tables."""
        config, weights, ops = self.config, self.weights, self.ops
        eps, tokens = config.layer_norm_eps, packing.num_tokens
        heads, head_dim = config.num_attention_heads, config.head_dim
        for layer, attention_args in zip(weights.layers, self._attention_args):
            normed = hidden if layer.attn_norm is None else ops.layer_norm(hidden, layer.attn_norm, eps)
            q, k, v = ops.linear(normed, layer.qkv).view(tokens, 3, heads, head_dim).unbind(1)
            context = ops.attention(q, k, v, packing, **attention_args).view(tokens, config.hidden_size)
            hidden = ops.linear(context, layer.attn_out, residual=hidden)
            gated = ops.linear(ops.layer_norm(hidden, layer.ffn_norm, eps), layer.ffn_in, self.activation, glu=True)
            hidden = ops.linear(gated, layer.ffn_out, residual=hidden)
            if packed_states is not None:
                packed_states.append(hidden)
        hidden = ops.layer_norm(hidden, weights.final_norm, eps)
        if packed_states is not None:  # as transformers: the last hidden state is the normalised one
            packed_states[-1] = hidden
        return hidden

    def _empty_output(self, packing, output_hidden_states):
        hidden_size = self.config.hidden_size
        empty = torch.zeros(packing.batch_size, packing.seq_len, hidden_size, dtype=self.dtype, device=self.device)
        pooled = torch.zeros(packing.batch_size, hidden_size, dtype=self.dtype, device=self.device)
        states = (empty,) * (self.config.num_hidden_layers + 1) if output_hidden_states else None
        return EncoderOutput(last_hidden_state=empty, pooler_output=pooled if self.weights.pooler is not None else None,
                             hidden_states=states)
