"""Random ModernBERT checkpoints for tests: odd sizes, 4 layers (global, sliding, sliding, global with
transformers' default of a global layer every 3rd), a window of 8 so the test sequences outrun it, biases
everywhere or nowhere."""

import torch

# head_dim 32: the smallest the Triton attention kernel serves.
MODERNBERT_SETTINGS = dict(vocab_size=101, hidden_size=64, num_attention_heads=2, num_hidden_layers=4,
                           intermediate_size=40, local_attention=8, max_position_embeddings=64,
                           pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
LENGTHS = [21, 6, 13]  # ragged, the longest past the window on either side


def random_modernbert(model_class="ModernBertModel", *, seed=0, biases=True, attn="eager", **overrides):
    """A transformers ModernBERT model with random weights (eval mode); `biases` sets attention_bias,
    mlp_bias and norm_bias together."""
    import transformers

    settings = {**MODERNBERT_SETTINGS, "attention_bias": biases, "mlp_bias": biases, "norm_bias": biases,
                **overrides}
    torch.manual_seed(seed)
    config = transformers.ModernBertConfig(**settings)
    config._attn_implementation = attn
    model = getattr(transformers, model_class)(config)
    with torch.no_grad():  # random norms and biases too: ones and zeros would hide mix-ups
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def modernbert_batch(lengths=LENGTHS, *, left_pad=False, seed=0):
    """input_ids, attention_mask [B, S]: [CLS] ... [SEP] rows of random ids, padded with id 0."""
    generator = torch.Generator().manual_seed(seed)
    seq_len = max(lengths)
    ids = torch.randint(5, MODERNBERT_SETTINGS["vocab_size"], (len(lengths), seq_len), generator=generator)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        columns = slice(seq_len - length, seq_len) if left_pad else slice(0, length)
        mask[row, columns] = 1
    return torch.where(mask.bool(), ids, 0), mask
