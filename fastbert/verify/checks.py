"""`fastbert verify`: check fastbert's numbers against independent implementations of BERT.

One ragged batch of built-in sentences runs through fastbert and through the oracles: the plain-PyTorch
reference (fastbert.verify.reference, always fp32) and, when it is installed, transformers' BertModel (eager
attention, fp32). Compared on real tokens only (padded positions are excluded): every hidden state (the
embeddings output and each layer's output), the final last_hidden_state and pooler_output (max abs
error), and the mean cosine between fastbert's and the oracle's mean-pooled sentence embeddings.
"""

import time
from dataclasses import dataclass, field

import torch

# Few and short on purpose: on a CPU the triton backend runs through Triton's interpreter, whose time
# grows with the number of programs (batch x heads for attention, token tiles for the GEMMs). Together
# they stay near 64 real tokens, one interpreter GEMM tile, and still cover a ragged batch (2 to ~25
# tokens, so the short rows carry padding), accents, CJK, emoji and a longer sentence.
SENTENCES = (
    ("short", "Hi!"),
    ("long", "The committee postponed its decision until spring, citing incomplete data from three offices."),
    ("accents", "Crème brûlée à Zürich: naïve façade, déjà vu."),
    ("CJK", "東京は日本の首都です。我喜欢读书。"),
    ("emoji", "Great game tonight 🏀🔥👏"),
)


@dataclass(frozen=True)
class Tolerance:
    """Bound on the max abs error of a hidden state: atol + rtol * scale, where scale is the largest
    |value| the reference holds on real tokens of that state; and the least acceptable mean cosine."""

    atol: float
    rtol: float
    cosine: float

    def bound(self, scale: float) -> float:
        return self.atol + self.rtol * scale


# Why these numbers (the oracles always compute in fp32):
# - float32: fastbert differs from the oracles only in the order of its sums (fused QKV, online softmax,
#   residual adds in the GEMM epilogues); on all-MiniLM-L6-v2, whose hidden states reach ~10, that leaves ~1e-6.
#   1e-4 absolute keeps ~100x headroom for deeper or wider models, while a real bug (a wrong mask, a
#   dropped bias, a misplaced scale) moves values by O(1e-1) or more.
# - float16 / bfloat16: every stored activation is rounded to an 11-bit / 8-bit mantissa (unit roundoff
#   4.9e-4 / 3.9e-3) and the rounding compounds through the layers, so the error scales with the
#   magnitude of the hidden state (O(1) to O(10) after LayerNorm). On all-MiniLM-L6-v2 the max error is
#   ~7e-4 of the scale in fp16 and ~7e-3 in bf16 (about 1.5 ulps at the largest value); 5e-3 and 4e-2
#   (bf16's mantissa is 8x coarser) leave 6-7x headroom and stay far below the O(scale) error of a wrong
#   kernel. The atol floor covers states whose largest value is small (the pooler's tanh).
# - cosine of mean-pooled embeddings, the number embedding users feel: rounding moves it by ~1e-6 in
#   fp32 and ~1e-4 in fp16/bf16; a wrong kernel drops it below 0.99.
TOLERANCES = {
    torch.float32: Tolerance(atol=1e-4, rtol=0.0, cosine=0.9999),
    torch.float16: Tolerance(atol=1e-3, rtol=5e-3, cosine=0.999),
    torch.bfloat16: Tolerance(atol=8e-3, rtol=4e-2, cosine=0.999),
}


@dataclass
class Check:
    """One row of the table: fastbert against each oracle on one quantity."""

    name: str
    kind: str  # "max_abs" (pass when value <= bound) or "cosine" (pass when value >= bound)
    bound: float
    values: dict = field(default_factory=dict)  # oracle name -> measured value (NaN when fastbert gave NaN)

    @property
    def passed(self) -> bool:
        # Written so that NaN fails: every comparison with NaN is False.
        if self.kind == "cosine":
            return all(value >= self.bound for value in self.values.values())
        return all(value <= self.bound for value in self.values.values())


@dataclass
class Report:
    description: list  # (label, text) lines describing the run
    oracles: list  # oracle names, in column order
    checks: list
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)


def _max_abs_error(actual, expected, mask):
    return (actual[mask].float() - expected[mask].float()).abs().max().item()


def _scale(expected, mask):
    return expected[mask].float().abs().max().item()


def _mean_pooled(last_hidden_state, attention_mask):
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return (last_hidden_state.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _load_transformers(path, device):
    """transformers' BertModel in fp32 with eager attention, or (None, reason it is not used)."""
    try:
        import transformers
    except ImportError:
        return None, "transformers is not installed: compared with the reference only"
    # Only the table belongs on the terminal: no load progress bar or warnings from transformers.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager")
    except Exception as err:  # any failure here only removes an optional oracle
        return None, f"transformers could not load the model ({type(err).__name__}: {err}): not compared"
    return model.float().to(device).eval(), f"transformers {transformers.__version__}"


def _run_transformers(model, batch, device):
    with torch.inference_mode():
        inputs = {name: tensor.to(device) for name, tensor in batch.items()}
        output = model(**inputs, output_hidden_states=True)
    return output.hidden_states, output.last_hidden_state, getattr(output, "pooler_output", None)


def run_verify(model, use_transformers=True, sentences=SENTENCES) -> Report:
    """Compare `model` (a FastBertModel loaded from a checkpoint folder) with the oracles loaded from
    the same folder; return the Report (format it with `format_report`)."""
    from .reference import ReferenceBertModel

    start = time.perf_counter()
    model_path = model.path
    tolerance = TOLERANCES[model.dtype]
    config = model.config
    batch = model.get_tokenizer()([text for _, text in sentences])
    mask = batch["attention_mask"].to(model.device).bool()
    inputs = [batch[name].to(model.device) for name in ("input_ids", "attention_mask", "token_type_ids")]

    fast = model(*inputs, output_hidden_states=True)
    fast_states = fast.hidden_states
    fast_pooled = _mean_pooled(fast.last_hidden_state, mask)

    # The reference runs where fastbert runs (fp32 on a GPU is fast and close to CPU results).
    reference = ReferenceBertModel.from_pretrained(model_path, dtype=torch.float32, device=model.device)
    ref = reference(*inputs, output_hidden_states=True)
    oracles = {"reference": (ref.hidden_states, ref.last_hidden_state, ref.pooler_output)}
    oracle_text = [f"reference (plain PyTorch, float32, {model.device})"]
    notes = []
    if use_transformers:
        hf_model, text = _load_transformers(model_path, model.device)
        if hf_model is None:
            notes.append(text)
        else:
            oracles["transformers"] = _run_transformers(hf_model, batch, model.device)
            oracle_text.append(f"{text} {type(hf_model).__name__} (eager attention, float32)")

    names = ["embeddings"] + [f"layer {i + 1}" for i in range(config.num_hidden_layers)]
    ref_states = oracles["reference"][0]
    checks = [Check(name, "max_abs", tolerance.bound(_scale(ref_states[i], mask)))
              for i, name in enumerate(names)]
    checks.append(Check("last_hidden_state", "max_abs", tolerance.bound(_scale(ref.last_hidden_state, mask))))
    has_pooler = fast.pooler_output is not None and ref.pooler_output is not None
    rows = mask.any(dim=1)
    if has_pooler:
        scale = ref.pooler_output.abs().max().item()
        checks.append(Check("pooler_output", "max_abs", tolerance.bound(scale)))
    checks.append(Check("cosine, mean-pooled", "cosine", tolerance.cosine))

    for oracle, (states, last, pooler) in oracles.items():
        for i in range(len(names)):
            checks[i].values[oracle] = _max_abs_error(fast_states[i], states[i], mask)
        checks[len(names)].values[oracle] = _max_abs_error(fast.last_hidden_state, last, mask)
        if has_pooler:
            checks[len(names) + 1].values[oracle] = (
                float("nan") if pooler is None else _max_abs_error(fast.pooler_output, pooler, rows))
        cosine = torch.nn.functional.cosine_similarity(fast_pooled, _mean_pooled(last, mask), dim=-1)
        checks[-1].values[oracle] = cosine.mean().item()

    interpreted = model.backend == "triton" and model.device.type == "cpu"
    tokens = int(mask.sum())
    description = [
        ("model", f"{model_path}"),
        ("shape", f"{config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                  f"{config.num_attention_heads} heads, {config.hidden_act}"),
        ("fastbert", f"backend {model.backend}{' (Triton interpreter)' if interpreted else ''}, "
                     f"{model.device}, {str(model.dtype).removeprefix('torch.')}"),
        *([("gemms", _gemm_picks(model.ops.gemm))] if hasattr(model.ops, "gemm") else []),
        ("oracles", "; ".join(oracle_text)),
        ("input", f"{len(sentences)} sentences ({', '.join(kind for kind, _ in sentences)}), "
                  f"{tokens} real tokens, padded to {mask.shape[1]}"),
    ]
    return Report(description, list(oracles), checks, notes, time.perf_counter() - start)


def _gemm_picks(picker):
    """Which GEMM implementation served the checked projections (fastbert/gemm.py)."""
    if picker.mode != "auto":
        return f"{picker.mode} (fixed)"
    picks = sorted(set(picker.choices.values()))
    return f"auto: {', '.join(picks)}" if picks else "auto: Triton kernel (the only one on CPU)"


def _number(value, kind):
    if value != value:  # NaN
        return "nan"
    return f"{value:.6f}" if kind == "cosine" else f"{value:.2e}"


def format_report(report: Report) -> str:
    """The compact text table `fastbert verify` prints."""
    lines = ["fastbert verify"]
    width = max(len(label) for label, _ in report.description)
    lines += [f"  {label:<{width}}  {text}" for label, text in report.description]
    lines += [f"  note{' ' * (width - 4)}  {note}" for note in report.notes]
    lines.append("")
    name_width = max(len(check.name) for check in report.checks)
    widths = [max(len(oracle), 9) for oracle in report.oracles]
    columns = list(zip(report.oracles, widths, strict=True))
    header = f"{'check':<{name_width}}  " + "  ".join(f"{o:>{w}}" for o, w in columns)
    lines.append(header + f"  {'tolerance':>11}  result")
    for check in report.checks:
        values = "  ".join(f"{_number(check.values[o], check.kind):>{w}}" for o, w in columns)
        bound = (f">= {check.bound:.4f}" if check.kind == "cosine" else f"<= {check.bound:.1e}").rjust(11)
        lines.append(f"{check.name:<{name_width}}  {values}  {bound}  {'pass' if check.passed else 'FAIL'}")
    lines.append("")
    failed = [check.name for check in report.checks if not check.passed]
    summary = (f"PASS: all {len(report.checks)} checks within tolerance" if not failed else
               f"FAIL: {len(failed)} of {len(report.checks)} checks out of tolerance ({', '.join(failed)})")
    lines.append(f"{summary} (max abs error on real tokens; {report.seconds:.1f} s)")
    return "\n".join(lines)
