"""sentence-transformers' embedding quantization (`quantize_embeddings`), reproduced here because
sentence-transformers is only a development dependency: the same arithmetic in the same NumPy dtypes, so
the same float embeddings give the same integers.

int8 / uint8: each dimension's [min, max] range (from `ranges`, else from `calibration_embeddings`, else
from the embeddings themselves) is cut into 255 equal steps and every value becomes its step's index
(uint8 0..255; int8 the same minus 128). binary / ubinary: one bit per dimension, set where the value is
positive, packed eight to a byte (ubinary as uint8, binary as int8 by subtracting 128)."""

import logging

import numpy as np
import torch

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
# Below this many embeddings, ranges taken from the embeddings themselves are unstable (sentence-transformers
# warns at the same count).
FEW_CALIBRATION_EMBEDDINGS = 100

logger = logging.getLogger(__name__)


def check_precision(precision):
    """`precision` if it is one of PRECISIONS (None means float32, as in sentence-transformers)."""
    if precision is None:
        return "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _to_numpy(tensor):
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).detach().cpu().numpy()


def quantize_embeddings(embeddings, precision, ranges=None, calibration_embeddings=None):
    """Float embeddings [N, D] (a tensor or an array) -> NumPy int8 / uint8 [N, D] or packed bits
    [N, ceil(D / 8)], or float32 for precision "float32". A list of [n_i, D] matrices (token embeddings)
    is quantized matrix by matrix with int8 ranges shared by all of them. ranges: [2, D] per-dimension
    (min, max); calibration_embeddings: embeddings to take them from. Ranges cannot come from a single
    embedding: a ValueError, as in sentence-transformers."""
    precision = check_precision(precision)
    if isinstance(embeddings, torch.Tensor):
        embeddings = _to_numpy(embeddings)
    elif isinstance(embeddings, list):
        if not embeddings:
            return []
        matrices = [_to_numpy(e) if isinstance(e, torch.Tensor) else np.asarray(e) for e in embeddings]
        if matrices[0].ndim == 2:
            if precision.endswith("int8") and ranges is None:
                calibration = np.concatenate(matrices) if calibration_embeddings is None else calibration_embeddings
                if len(calibration):
                    ranges = _ranges(calibration, precision, calibration_embeddings)
            return [quantize_embeddings(m, precision, ranges, calibration_embeddings) for m in matrices]
        embeddings = np.array(matrices)
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.int8, np.uint8):
        raise ValueError("embeddings to quantize must be floats, not int8 or uint8")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:  # nothing to calibrate: the empty output's shape
        dim = embeddings.shape[1] if precision.endswith("int8") else (embeddings.shape[1] + 7) // 8
        return np.zeros((0, dim), dtype=np.uint8 if precision.startswith("u") else np.int8)
    if precision.endswith("int8"):
        if ranges is None:
            ranges = _ranges(embeddings, precision, calibration_embeddings)
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)  # a constant dimension: every value in step 0
        indices = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return indices.astype(np.uint8) if precision == "uint8" else (indices - 128).astype(np.int8)
    bits = np.packbits(embeddings > 0, axis=-1)
    return bits if precision == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)


def _ranges(embeddings, precision, calibration_embeddings):
    """[2, D]: each dimension's min and max over the calibration embeddings (else the embeddings)."""
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise ValueError(f"cannot compute {precision} quantization ranges from a single embedding: quantize "
                             "several together, or give ranges= or calibration_embeddings= from a "
                             "representative set (fastbert.sentence.quantize.quantize_embeddings)")
        if embeddings.shape[0] < FEW_CALIBRATION_EMBEDDINGS:
            logger.warning("%s quantization ranges from only %d embeddings; ranges from more embeddings "
                           "(ranges= or calibration_embeddings=) are more stable", precision, len(embeddings))
        calibration_embeddings = embeddings
    calibration_embeddings = np.asarray(calibration_embeddings)
    return np.vstack((np.min(calibration_embeddings, axis=0), np.max(calibration_embeddings, axis=0)))
