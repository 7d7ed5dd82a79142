"""Checkpoints in the reference format (``{'model': state_dict, 'epoch', 'accuracy', ...}``),
written atomically, read with errors that say what is wrong."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pickle
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .util import NUMPY_MULTIARRAY_NAMES, numpy_multiarray

# Keys a checkpoint needs for --resume, beyond the reference's 'model' and 'epoch'.
RESUME_KEYS = ("task", "optimizer", "scheduler", "best_acc", "seed")

# torchvision names its weight files <arch>-<first 8+ hex digits of their sha256>.pth; its ResNets
# are registered here as imagenet_<arch>.
_TORCHVISION_FILE = re.compile(r"([a-z0-9_]+)-[0-9a-f]{8,}\.pth")
TORCHVISION_PREFIX = "imagenet_"

TEMP_SUFFIX = ".tmp"
# The opt-in that widens the allow-list by the types the user names (see read_checkpoint_file).
TRUST_FLAG = "--trust_checkpoint"


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


def _reference_safe_types() -> list[Any]:
    """What reference-format checkpoints hold beyond tensors, containers and plain values: the
    pickled ``argparse.Namespace`` of their options, and numpy scalars (an accuracy saved as
    ``np.float64``, say) with their dtypes. Building any of these runs no code of the file's
    choosing. Numpy arrays are left out (object arrays could hold anything), as is everything else."""
    scalar = numpy_multiarray().scalar
    numeric = np.typecodes["AllInteger"] + np.typecodes["AllFloat"] + "?"
    # Before numpy 1.25 every dtype was of class np.dtype itself.
    dtype_classes = {type(np.dtype(code)) for code in numeric} - {np.dtype}
    return [
        argparse.Namespace, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__),
        *((scalar, f"{module}.scalar") for module in NUMPY_MULTIARRAY_NAMES),
    ]


def _allowing(extra: Sequence[Any] = ()) -> contextlib.AbstractContextManager:
    """torch's allow-list widened for one load only (the reference's types and ``extra``), so the
    user's own ``torch.load`` calls keep torch's defaults. torch < 2.5 has no scoped allow-list:
    reference files with a Namespace are then refused like any other."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    return scoped([*_reference_safe_types(), *extra]) if scoped is not None else contextlib.nullcontext()


def _named_global(name: str) -> Any:
    """The object a ``--trust_checkpoint`` name (``module.attribute``, as the refusal spells it) means."""
    module_name, _, attribute = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(f"{TRUST_FLAG} {name}: no such type or function ({err})") from None


def _unsafe_globals(path: Path, first: str | None) -> list[str]:
    """Every type the file asks for beyond the allow-list (torch lists them without building
    anything); just the one the load stopped at where torch cannot list them."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    names: list[str] = []
    if lister is not None:
        try:
            with _allowing():
                names = list(lister(str(path)))
        except Exception:  # noqa: BLE001 - a listing failure leaves the one name we know
            names = []
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in _reference_safe_types() if isinstance(t, type)}
    names = [n for n in names if n not in allowed]
    return names or ([first] if first else [])


def _refused_global(err: Exception) -> str | None:
    """The type torch's weights-only unpickler refused to build, from its message."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(r"but got <class '([\w.]+)'>", str(err))
    return found[1] if found else None


def _first_sentence(err: Exception) -> str:
    """torch's read errors go on for several sentences of generic advice; the first says what failed."""
    return str(err).strip().split("\n")[0].split(". ")[0][:200]


def _unpickler_detail(err: Exception) -> str:
    """The weights-only unpickler's own reason, without torch's generic advice around it."""
    text = str(err).split("WeightsUnpickler error:")[-1]
    text = text.split("Check the documentation of torch.load")[0]
    return " ".join(text.split())[:200]


def read_checkpoint_file(path: str | Path, map_location: Any = "cpu", trust: Sequence[str] = ()) -> Any:
    """Every checkpoint this project reads goes through here, always with torch's weights-only
    unpickler, which builds tensors, containers and plain values and nothing else; the reference's
    harmless extras (:func:`_reference_safe_types`) are allowed during this load only.

    A file that asks for any other type is refused with a :class:`CheckpointError` naming the file
    and every type it wants: nothing in it runs. ``trust`` (the user's ``--trust_checkpoint
    NAME,...``) adds exactly the named types or functions to the allow-list for this load, with a
    warning; there is no path that unpickles a file without an allow-list."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    extra = [_named_global(name) for name in trust]
    if trust:
        print(f"warning: {TRUST_FLAG}: allowing {', '.join(trust)} while loading {path}; the file may call "
              "each of them", file=sys.stderr, flush=True)
    try:
        with _allowing(extra):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        wanted = [n for n in _unsafe_globals(path, _refused_global(err)) if n not in trust]
        if wanted:
            raise CheckpointError(
                f"refused checkpoint {path}: it asks to build {', '.join(wanted)}, beyond the types checkpoints "
                "hold (tensors, containers, plain values, the reference's argparse options). Nothing in it was run. "
                f"If you trust this file and its source, and these types, rerun with {TRUST_FLAG} {','.join(wanted)}"
            ) from err
        raise CheckpointError(
            f"cannot read checkpoint {path} with torch's safe (weights-only) loader ({_unpickler_detail(err)}): it is "
            "corrupted or not a torch checkpoint"
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {_first_sentence(err)}); the file is truncated, "
            "corrupted or not a torch checkpoint"
        ) from err


def load_checkpoint(path: str | Path, map_location: Any = "cpu", trust: Sequence[str] = ()) -> dict[str, Any]:
    """Read a checkpoint of this project or the reference (a dict with a ``'model'`` entry); see
    :func:`read_checkpoint_file` for what is loaded and ``trust``."""
    path = Path(path)
    state = read_checkpoint_file(path, map_location, trust)
    if not isinstance(state, dict) or not isinstance(state.get("model"), Mapping):
        raise CheckpointError(f"{path} is not a checkpoint of this format: expected a dict with a 'model' entry "
                              "holding a state dict")
    return state


def _is_bare_state_dict(state: Any) -> bool:
    return isinstance(state, Mapping) and bool(state) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())


def load_weights_file(path: str | Path, map_location: Any = "cpu", trust: Sequence[str] = ()) -> dict[str, Any]:
    """Read model weights saved either as a checkpoint (``{'model': state_dict, ...}``, this
    project's and the reference's format) or as a bare state dict, the way torchvision publishes
    its weights (e.g. ``resnet34-b627a593.pth``). Returns a checkpoint dict either way (a bare
    state dict comes back as ``{'model': state_dict}``). See :func:`read_checkpoint_file` for
    ``trust``."""
    path = Path(path)
    state = read_checkpoint_file(path, map_location, trust)
    if isinstance(state, dict) and isinstance(state.get("model"), Mapping):
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
            options[key] = _resolved(options[key])
    return options


def _resolved(path: Any) -> Any:
    """A path flag's value made absolute; several teachers give a list of paths."""
    if isinstance(path, (list, tuple)):
        return [_resolved(p) for p in path]
    return str(Path(path).expanduser().resolve())


def _same_value(key: str, old: Any, new: Any) -> bool:
    if key in PATH_FLAGS and old is not None and new is not None:
        return _resolved(old) == _resolved(new)
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


def recorded_input_view(state: Mapping[str, Any]) -> str:
    """The input view (``dataset/views.py``) the network of a checkpoint was trained on: ``'input'``
    in this project's files; ``'rgb'`` for the reference's and torchvision's, which know no other."""
    view = state.get("input", "rgb")
    return view if isinstance(view, str) else "rgb"


def check_input_view(state: Mapping[str, Any], path: str | Path, view: str, flag: str) -> None:
    """Refuse to run the network of ``path`` on another input view than it was trained on."""
    recorded = recorded_input_view(state)
    if recorded != view:
        raise CheckpointError(
            f"{path} holds a network trained on the input view {recorded!r}, but {flag} gives it {view!r}: pass "
            f"{flag} {recorded}, or use a network trained on {view!r}"
        )


def recorded_model_name(state: Mapping[str, Any]) -> str | None:
    """The architecture a checkpoint records: ``'model_name'`` (this project's files), else its
    options (:func:`saved_options`): ``model_s`` for a student's run, ``model`` for a teacher's."""
    options = saved_options(state)
    name = state.get("model_name") or options.get("model_s") or options.get("model")
    return name if isinstance(name, str) else None


def resolve_model_name(path: str | Path, state: Mapping[str, Any], known_names: Iterable[str],
                       explicit: str | None = None, flag: str = "--model_t") -> str:
    """The architecture of checkpoint ``path`` (contents ``state``): ``explicit`` (the user's
    ``flag``), else what the checkpoint records (:func:`recorded_model_name`), else its folder: a
    student run folder ``S:<student>_T:<teacher>_...`` names the student, any other folder is read
    by :func:`model_name_from_path`. What the file says wins over where it happens to be stored."""
    known = list(known_names)
    if explicit:
        if explicit not in known:
            raise CheckpointError(f"unknown {flag} {explicit!r}; choose one of: {', '.join(known)}")
        return explicit
    recorded = recorded_model_name(state)
    if recorded in known:
        return recorded
    folder = Path(path).resolve().parent.name
    student_run = re.match(r"S:(.+?)_T:", folder)
    if student_run and student_run[1] in known:
        return student_run[1]
    try:
        return model_name_from_path(path, known)
    except CheckpointError:
        records = f"records the unknown architecture {recorded!r}" if recorded else "records no architecture"
        raise CheckpointError(
            f"cannot tell the architecture of {path}: the checkpoint {records} and its folder name {folder!r} "
            "names none (the reference layouts are <model>_<anything>/<file>.pth, e.g. "
            "resnet32x4_vanilla/ckpt_epoch_240.pth, and S:<student>_T:<teacher>_.../ for students; torchvision's "
            f"is <arch>-<hash>.pth, e.g. resnet34-b627a593.pth); name it with {flag}"
        ) from None


def describe_mismatch(model_state: Mapping[str, torch.Tensor], file_state: Mapping[str, Any],
                      shown: int = 3) -> list[str]:
    """Why ``file_state`` does not load into a model with ``model_state``: counts of missing keys,
    unexpected keys and shape mismatches, each with its first ``shown`` examples (a ResNet of
    another depth differs in hundreds of keys)."""
    def listing(items: list) -> str:
        return ", ".join(map(str, items[:shown])) + (f", ... ({len(items) - shown} more)" if len(items) > shown else "")

    missing = [k for k in model_state if k not in file_state]
    unexpected = [k for k in file_state if k not in model_state]
    wrong_shape = [
        f"{k}: file {tuple(file_state[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in model_state
        if k in file_state and isinstance(file_state[k], torch.Tensor) and file_state[k].shape != model_state[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {listing(wrong_shape)}")
    return problems


def _classifier_mismatch(model: torch.nn.Module, model_state: Mapping[str, torch.Tensor],
                         weights: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(file's classes, model's classes)`` when the only difference is the classifier's size."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None or set(model_state) != set(weights):
        return None
    classifier = get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is classifier) + "."
    differ = [k for k in model_state if getattr(weights[k], "shape", None) != model_state[k].shape]
    if not differ or not all(k.startswith(prefix) for k in differ):
        return None
    key = differ[0]
    return int(weights[key].shape[0]), int(model_state[key].shape[0])


def load_model_weights(model: torch.nn.Module, path: str | Path, name: str = "model", trust: Sequence[str] = (),
                       state: dict[str, Any] | None = None, flag: str | None = None) -> dict[str, Any]:
    """Load the weights of ``path`` (a checkpoint or a bare torchvision-style state dict, see
    :func:`load_weights_file`; ``state``: its contents, already read) into ``model`` strictly. A
    mismatch is a :class:`CheckpointError` that summarises the differing keys and, with ``flag``,
    says which option names the file's architecture. Returns the whole checkpoint."""
    state = load_weights_file(path, trust=trust) if state is None else state
    weights = state["model"]
    # Checkpoints saved from a DataParallel/DDP wrapper prefix every key with 'module.'.
    if weights and all(isinstance(key, str) and key.startswith("module.") for key in weights):
        weights = {key[len("module."):]: value for key, value in weights.items()}
    model_state = model.state_dict()
    classes = _classifier_mismatch(model, model_state, weights)
    if classes is not None:
        raise CheckpointError(
            f"{path}: the classifier of this {name} has {classes[0]} outputs, but the data has {classes[1]} "
            "classes: use weights trained on the same classes as the data"
        )
    problems = describe_mismatch(model_state, weights)
    if problems:
        fix = f"; if the file holds another architecture, name it with {flag}" if flag else ""
        raise CheckpointError(
            f"{path} does not hold weights of the {name} architecture it was given ({type(model).__name__}): "
            f"{'; '.join(problems)}{fix}"
        )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:  # same keys and shapes, yet refused (e.g. a non-tensor value)
        raise CheckpointError(f"{path} does not load into {name}: {str(err)[:300]}") from err
    return state
