"""Checkpoints in the reference format (``{'model': state_dict, 'epoch', 'accuracy', ...}``),
written atomically, read with errors that say what is wrong."""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import torch

# Keys a checkpoint needs for --resume, beyond the reference's 'model' and 'epoch'.
RESUME_KEYS = ("task", "optimizer", "scheduler", "best_acc", "seed")

# torchvision names its weight files <arch>-<first 8+ hex digits of their sha256>.pth; its ResNets
# are registered here as imagenet_<arch>.
_TORCHVISION_FILE = re.compile(r"([a-z0-9_]+)-[0-9a-f]{8,}\.pth")
TORCHVISION_PREFIX = "imagenet_"

TEMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not what the caller needs."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write`` writes into a binary file, atomically: the
    bytes go to a temporary file in the same folder, which replaces ``path`` only once complete and
    synced. On any error (a full disk, an interrupt) ``path`` keeps its previous content and the
    temporary file is removed; a killed process may leave one behind, which
    :func:`remove_stale_temporaries` clears."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write (full disk) as a RuntimeError of its zip writer, raised
        # while handling the OSError: surface the OSError, which callers handle.
        os_error = _os_error_in(err)
        if os_error is None or os_error is err:
            raise
        raise OSError(os_error.errno, os_error.strerror, str(path)) from err


def _os_error_in(err: BaseException) -> OSError | None:
    """The first OSError in ``err``'s chain of causes and contexts, ``err`` included."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` when its process was
    killed mid-write (``.<name>.<random>.tmp``); returns them."""
    stale = sorted(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    atomic_write(path, lambda f: torch.save(state, f))


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


# Flags a resumed run may change: they decide how a run is executed, where it is written or how
# often it reports, never what its numbers mean. Every other recorded flag must match, so a flag
# added later is checked unless it is listed here. --epochs may only grow (checked on its own), and
# --seed, ignored on resume, must be left out or equal the recorded seed.
RESUME_FREE_FLAGS = frozenset({
    "resume", "epochs", "seed", "save_folder", "trial", "device", "num_workers", "print_freq", "tb_freq",
    "save_freq", "channels_last", "compile", "download", "threads", "trust_checkpoint",
})
# Flags holding a file or folder: compared as resolved paths (one folder spelled two ways agrees).
PATH_FLAGS = frozenset({"data_folder", "path_t", "path_s"})
# How a flag left at None reads in a message (default: "(not set)").
_UNSET = {"train_subset": "all images", "test_subset": "all images"}


def saved_options(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's recorded flags: a dict in this project's files, an ``argparse.Namespace`` in
    the reference's, absent from bare weights."""
    saved = state.get("opt")
    if saved is None:
        return {}
    return dict(saved) if isinstance(saved, Mapping) else dict(getattr(saved, "__dict__", {}))


def recorded_options(opt: Any) -> dict[str, Any]:
    """The flags a checkpoint records (``'opt'``): the parsed options, paths made absolute so that a
    resume from another working directory is compared with the folder actually used."""
    options = dict(vars(opt))
    for key in PATH_FLAGS & options.keys():
        if options[key] is not None:
            options[key] = str(Path(options[key]).expanduser().resolve())
    return options


def _same_value(key: str, old: Any, new: Any) -> bool:
    if key in PATH_FLAGS and old is not None and new is not None:
        return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(old) == list(new)
    return old == new


def _shown(key: str, value: Any) -> str:
    if value is None:
        return _UNSET.get(key, "(not set)")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def check_same_run(state: dict[str, Any], opt: Any, path: str | Path) -> None:
    """Refuse to resume a checkpoint under flags that change what the run's numbers mean (data,
    subsets, model, method, schedule, loss weights ...): every recorded flag must match except those
    of :data:`RESUME_FREE_FLAGS`, and ``--epochs`` may only grow. All differences are named in one
    message. Flags the checkpoint does not record (older files) are not compared."""
    saved = saved_options(state)
    current = vars(opt)
    differences = [
        f"--{key} {_shown(key, saved[key])}, not {_shown(key, value)}"
        for key, value in current.items()
        if key not in RESUME_FREE_FLAGS and key in saved and not _same_value(key, saved[key], value)
    ]
    if "epochs" in saved and current.get("epochs") is not None and current["epochs"] < saved["epochs"]:
        differences.append(f"--epochs {saved['epochs']}, not {current['epochs']} (--epochs may only grow)")
    if current.get("seed") is not None and "seed" in state and current["seed"] != state["seed"]:
        differences.append(f"--seed {state['seed']}, not {current['seed']} (a resumed run keeps its seed)")
    if differences:
        raise CheckpointError(
            f"--resume {path} continues a run that was started with other flags: it was run with "
            f"{'; '.join(differences)}. Resume it with the flags it was started with (only --epochs may grow), "
            "or start a new run without --resume"
        )


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
