"""Model names to checkpoint folders: a local folder, else a Hugging Face Hub id ("org/name").

A hub id resolves through huggingface_hub's snapshot_download: downloaded into the Hugging Face cache
when online, taken from that cache when offline (HF_HUB_OFFLINE=1, no request made) or when the Hub
cannot be reached (found out by one request, not retried, within HF_HUB_ETAG_TIMEOUT seconds).
Only the files fastbert reads are fetched (configs, tokenizer files, safetensors weights; .bin weights
only where a folder has no safetensors), not a repository's ONNX, OpenVINO, TensorFlow or Flax copies.
Offline, the cached snapshot of the main revision is used as it is.
"""

import os
import posixpath
from fnmatch import fnmatch
from pathlib import Path

# Everything fastbert reads from a checkpoint or sentence-transformers folder, at any depth (fnmatch's *
# spans "/"): configs, tokenizers (tokenizer.json, vocab.txt, vocab.json + merges.txt, sentencepiece), weights.
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]
# PyTorch weights, fetched only for folders that lack safetensors weights.
HUB_TORCH_FILES = ["*pytorch_model*.bin"]
_TRUE = ("1", "on", "true", "yes")


def resolve_model_path(name) -> Path:
    """The checkpoint folder `name` names: an existing local path as it is, else the snapshot folder of
    the Hugging Face Hub model of that id. Raises FileNotFoundError saying what was tried and how to fix it."""
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"the model must be a folder path or a Hugging Face Hub id, got {type(name).__name__}")
    path = Path(name).expanduser()
    if path.exists():
        return path
    repo_id = os.fspath(name)
    if not _is_hub_id(repo_id):
        raise FileNotFoundError(f"model folder not found: {path} (nor is {repo_id!r} a Hugging Face Hub id)")
    return _snapshot(repo_id, path)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub read it at import, or as set since."""
    from huggingface_hub import constants

    set_now = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower()
    return bool(constants.HF_HUB_OFFLINE) or set_now in _TRUE


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _snapshot(repo_id: str, local_path: Path) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    offline = hub_offline()
    tried = f"no local folder {local_path.absolute()}, and the Hugging Face Hub model {repo_id!r}"
    download_error = None
    if not offline:
        try:
            folder = _download(repo_id)
        except (RepositoryNotFoundError, GatedRepoError) as err:
            raise FileNotFoundError(
                f"{tried} does not exist or needs a login (private or gated): check the id, log in (hf auth login, "
                f"or HF_TOKEN), or pass a local checkpoint folder ({type(err).__name__})"
            ) from err
        except Exception as err:  # no network, the Hub down, a full disk: the local cache may still serve
            download_error = err
        else:
            return _checked(repo_id, folder)
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        return _checked(repo_id, cached)
    cache = constants.HF_HUB_CACHE
    if offline:
        raise FileNotFoundError(
            f"{tried} is not in the local Hugging Face cache {cache}, and HF_HUB_OFFLINE=1 forbids downloading it: "
            f"download it once with network access (hf download {repo_id}), unset HF_HUB_OFFLINE, or pass a local "
            "checkpoint folder")
    raise FileNotFoundError(
        f"{tried} could not be downloaded ({_cause(download_error)}) and is not in the local Hugging Face cache "
        f"{cache}: check the network connection (and HF_ENDPOINT), or pass a local checkpoint folder"
    ) from download_error


def _download(repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the Hugging Face cache, with the files fastbert reads downloaded.

    The first request, the repository's file list, is one metadata request (model_info) bounded by
    huggingface_hub's own metadata timeout (HF_HUB_ETAG_TIMEOUT) and not retried: an unreachable Hub fails
    it at once and the cache is tried next. (list_repo_files retries a refused connection five times with
    back-off, half a minute; the session's default timeout is none, so a Hub that never answers would
    hang.) Once the Hub has answered, snapshot_download's own retries serve a flaky connection."""
    from huggingface_hub import HfApi, constants, snapshot_download

    info = HfApi().model_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    files = [sibling.rfilename for sibling in info.siblings or ()]
    return Path(snapshot_download(repo_id, allow_patterns=hub_files(files), etag_timeout=constants.HF_HUB_ETAG_TIMEOUT))


def hub_files(files: list[str]) -> list[str]:
    """Of a repository's files, those fastbert reads: HUB_FILES everywhere, and the PyTorch weights of a
    folder only where that folder holds no safetensors (which fastbert would read instead)."""
    with_safetensors = {posixpath.dirname(f) for f in files if f.endswith(".safetensors")}
    return [f for f in files if any(fnmatch(f, pattern) for pattern in HUB_FILES)
            or (any(fnmatch(f, pattern) for pattern in HUB_TORCH_FILES)
                and posixpath.dirname(f) not in with_safetensors)]


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of the Hub's main revision of `repo_id`, if the cache has one (the
    cache's documented layout: models--org--name/refs/main names the commit, snapshots/<commit> holds it)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def _checked(repo_id: str, folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the Hugging Face Hub model {repo_id!r} (snapshot {folder}) has no config.json: "
                                "not a transformers checkpoint")
    return folder


def _cause(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
