"""What a model folder's rows depend on, as SHA-256 digests of its files: the progress record of
`fastbert encode --output` keeps them, so that --resume refuses a model changed in place (new weights
under the same path would put rows of two models in one file).

The files are the folder's own (config.json, the weights, the tokenizer's files, modules.json and the
sentence-transformers configs) and those of the module folders modules.json names (Pooling, Dense,
Normalize). Weights of other frameworks, which fastbert never reads, and documentation are left out:
hashing them would only cost time. Every byte of the rest is hashed (a weight file rewritten in place
may keep its size and mtime), streamed in bounded memory."""

import hashlib
from pathlib import Path

from fastbert.jsonio import read_json

# Files no loader of fastbert reads: other frameworks' weights and documentation.
UNREAD_SUFFIXES = frozenset({".md", ".h5", ".msgpack", ".ot", ".onnx", ".tflite", ".gguf", ".png", ".jpg"})


def _module_folders(folder):
    """The subfolders modules.json names, inside `folder`; an unreadable modules.json names none (the
    pipeline's loader reports it)."""
    try:
        entries = read_json(folder / "modules.json", expect=list)
    except (OSError, ValueError):
        return []
    paths = {entry.get("path") for entry in entries if isinstance(entry, dict)}
    root = folder.resolve()
    folders = []
    for path in sorted(p for p in paths if isinstance(p, str) and p):
        candidate = (folder / path).resolve()
        if candidate != root and candidate.is_relative_to(root) and candidate.is_dir():
            folders.append(folder / path)
    return folders


def _files(folder, recursive):
    entries = folder.rglob("*") if recursive else folder.iterdir()
    for path in entries:
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() in UNREAD_SUFFIXES:
            continue
        if path.is_file():
            yield path


def model_file_digests(folder):
    """{path relative to `folder` (POSIX): SHA-256 hex} of the files the model's rows depend on."""
    folder = Path(folder)
    files = set(_files(folder, recursive=False))
    for module in _module_folders(folder):
        files.update(_files(module, recursive=True))
    digests = {}
    for path in sorted(files):
        with open(path, "rb") as f:
            digests[path.relative_to(folder).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests
