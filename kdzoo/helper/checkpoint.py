"""Checkpoints in the reference format (``{'model': state_dict, 'epoch', 'accuracy', ...}``),
written atomically, read with errors that say what is wrong."""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

# Keys a checkpoint needs for --resume, beyond the reference's 'model' and 'epoch'.
RESUME_KEYS = ("task", "optimizer", "scheduler", "best_acc", "seed")

# torchvision names its weight files <arch>-<first 8+ hex digits of their sha256>.pth; its ResNets
# are registered here as imagenet_<arch>.
_TORCHVISION_FILE = re.compile(r"([a-z0-9_]+)-[0-9a-f]{8,}\.pth")
TORCHVISION_PREFIX = "imagenet_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not what the caller needs."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, map_location: Any) -> Any:
    """``torch.load`` of a file, safely where possible. Plain tensors and containers load with
    ``weights_only``; files of the reference code that pickled an ``argparse.Namespace`` are retried
    with full unpickling, which runs code from the file, so load only checkpoints you trust."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {err}); the file is truncated or not a "
            "torch checkpoint"
        ) from err


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint of this project or the reference (a dict with a ``'model'`` entry)."""
    path = Path(path)
    state = _read(path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this format: expected a dict with a 'model' entry")
    return state


def _is_bare_state_dict(state: Any) -> bool:
    return isinstance(state, Mapping) and bool(state) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())


def load_weights_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read model weights saved either as a checkpoint (``{'model': state_dict, ...}``, this
    project's and the reference's format) or as a bare state dict, the way torchvision publishes
    its weights (e.g. ``resnet34-b627a593.pth``). Returns a checkpoint dict either way (a bare
    state dict comes back as ``{'model': state_dict}``)."""
    path = Path(path)
    state = _read(path, map_location)
    if isinstance(state, dict) and "model" in state:
        return state
    if _is_bare_state_dict(state):
        return {"model": state}
    found = f"a dict with keys {', '.join(map(str, list(state)[:8]))}" if isinstance(state, Mapping) else (
        f"a {type(state).__name__}")
    raise CheckpointError(
        f"{path} holds no model weights: expected a checkpoint {{'model': state_dict, ...}} or a bare state dict "
        f"of tensors (as torchvision's weight files), found {found}"
    )


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} cannot resume a run: it lacks {', '.join(missing)} (weights-only checkpoints, such "
            "as the reference code's, can be used as teachers but not resumed)"
        )


def check_same_run(state: dict[str, Any], opt: Any, path: str | Path, keys: Iterable[str]) -> None:
    """Refuse to resume a checkpoint under flags that describe another run (another model or method)."""
    saved = state.get("opt", {})
    for key in keys:
        if key in saved and saved[key] != getattr(opt, key):
            raise CheckpointError(f"--resume {path} is a run of --{key} {saved[key]}, not --{key} {getattr(opt, key)}")


def model_name_from_path(path: str | Path, known_names: Iterable[str]) -> str:
    """The architecture a weight file's name implies.

    * a torchvision weight file, ``<arch>-<hash>.pth``, is the ImageNet model of that name:
      ``resnet34-b627a593.pth`` -> ``imagenet_resnet34`` (``models/imagenet_resnet.py``);
    * otherwise the checkpoint's folder names it, as the reference reads teacher names:
      ``save/models/resnet32x4_vanilla/ckpt_epoch_240.pth`` -> ``resnet32x4``. The longest known
      name followed by ``_`` (or the end) wins, so ``wrn_40_2_...`` resolves to ``wrn_40_2``.
    """
    known = list(known_names)
    torchvision_file = _TORCHVISION_FILE.fullmatch(Path(path).name)
    if torchvision_file and TORCHVISION_PREFIX + torchvision_file[1] in known:
        return TORCHVISION_PREFIX + torchvision_file[1]
    folder = Path(path).resolve().parent.name
    matches = [n for n in known if folder == n or folder.startswith(n + "_")]
    if not matches:
        raise CheckpointError(
            f"cannot tell the architecture from the folder name {folder!r} of {path}: the reference layout is "
            "<model>_<anything>/<file>.pth (e.g. resnet32x4_vanilla/ckpt_epoch_240.pth), torchvision's is "
            "<arch>-<hash>.pth (e.g. resnet34-b627a593.pth); pass the name explicitly"
        )
    return max(matches, key=len)


def load_model_weights(model: torch.nn.Module, path: str | Path, name: str = "model") -> dict[str, Any]:
    """Load the weights of ``path`` (a checkpoint or a bare torchvision-style state dict, see
    :func:`load_weights_file`) into ``model`` strictly; a mismatch is reported as a file of another
    architecture. Returns the whole checkpoint."""
    state = load_weights_file(path)
    weights = state["model"]
    # Checkpoints saved from a DataParallel/DDP wrapper prefix every key with 'module.'.
    if weights and all(key.startswith("module.") for key in weights):
        weights = {key[len("module."):]: value for key, value in weights.items()}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        # torch lists every key on one line: a wrong ResNet would print hundreds.
        first = [line if len(line) <= 400 else line[:400] + " ..." for line in str(err).splitlines()[:3]]
        raise CheckpointError(
            f"{path} does not hold weights of the {name} architecture it was given "
            f"({type(model).__name__}): {' '.join(first)}"
        ) from err
    return state
