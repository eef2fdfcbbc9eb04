"""Model names -> local directories: a known GPT-2 name is downloaded once with huggingface_hub.

Only the four files the engine reads are fetched (``MODEL_FILES``), into the Hub's cache or into
``models_dir/<name>``, where files already present are used without any network access. A failed
download is a ``CheckpointDownloadError`` that says which files to fetch by hand and where.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .errors import CheckpointDownloadError, CheckpointError

PathLike = Union[str, "os.PathLike[str]"]

# Model names -> Hub repositories. picoGPT's sizes are aliases of the Hugging Face names.
MODEL_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
MODEL_ALIASES = {
    "124M": "gpt2",
    "355M": "gpt2-medium",
    "774M": "gpt2-large",
    "1558M": "gpt2-xl",
}
# Exactly the files a download fetches (and that a local directory should hold).
MODEL_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")


def resolve_model_dir(
    name_or_path: PathLike, models_dir: Optional[PathLike] = None
) -> Path:
    """An existing directory as it is; a known model name downloaded (once) and its directory."""
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        return path
    if (
        path.is_file()
    ):  # e.g. model.safetensors itself: the directory holding it is meant
        raise CheckpointError(
            f"{os.fspath(name_or_path)!r} is a file, not a model directory: pass the directory "
            f"that holds it ({path.parent}), with {', '.join(MODEL_FILES)}"
        )
    name = _canonical_name(os.fspath(name_or_path))
    if name is None:
        known = ", ".join(list(MODEL_REPOS) + list(MODEL_ALIASES))
        raise CheckpointError(
            f"{os.fspath(name_or_path)!r} is neither an existing directory nor a known model name "
            f"({known})"
        )
    return _download(name, models_dir)


def _canonical_name(name: str) -> Optional[str]:
    name = MODEL_ALIASES.get(name, name)
    if name in MODEL_REPOS:
        return name
    for short, repo in MODEL_REPOS.items():
        if name == repo:
            return short
    return None


def _download(name: str, models_dir: Optional[PathLike]) -> Path:
    repo_id = MODEL_REPOS[name]
    target = Path(models_dir).expanduser() / name if models_dir is not None else None
    if target is not None and all((target / f).is_file() for f in MODEL_FILES):
        return target  # downloaded before: no network access at all

    def failure(summary: str, reason: str) -> CheckpointDownloadError:
        return CheckpointDownloadError(
            f"{summary}\n{_download_help(name, repo_id, target)}",
            model_name=name,
            repo_id=repo_id,
            files=MODEL_FILES,
            target=target,
            reason=reason,
        )

    try:
        import huggingface_hub
    except ImportError:
        raise failure(
            f"downloading '{name}' (Hugging Face repo {repo_id!r}) needs huggingface_hub "
            "(pip install huggingface_hub).",
            "huggingface_hub is not installed",
        ) from None
    kwargs: dict = {"allow_patterns": list(MODEL_FILES)}
    if target is not None:
        kwargs["local_dir"] = str(target)
    try:
        path = Path(huggingface_hub.snapshot_download(repo_id, **kwargs))
    except (
        Exception
    ) as e:  # offline, no route, HTTP errors, disk full, ...: all get the same help
        first_line = (str(e).strip().splitlines() or [""])[0]
        reason = (
            f"{type(e).__name__}: {first_line[:160]}"  # the hub's messages run long
        )
        raise failure(
            f"could not download '{name}' from the Hugging Face Hub (repo {repo_id!r}): {reason}",
            reason,
        ) from e
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise failure(
            f"the download of '{name}' (repo {repo_id!r}) into {path} lacks {', '.join(missing)}.",
            f"the download lacks {', '.join(missing)}",
        )
    return path


def _download_help(name: str, repo_id: str, target: Optional[Path]) -> str:
    where = target if target is not None else Path("models") / name
    return (
        f"To use '{name}' without network access, download these files from "
        f"https://huggingface.co/{repo_id}/tree/main :\n    {', '.join(MODEL_FILES)}\n"
        f"put them into one directory, e.g. {where}, and pass that directory instead of the name "
        f"(load_pretrained({str(where)!r}), gpt2gen --model {where})"
        + (
            ""
            if target is not None
            else f" (or pass models_dir='models': files already in models/{name} are used as "
            "they are)"
        )
    )
