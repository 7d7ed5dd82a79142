#!/usr/bin/env bash
# Install the CIFAR-100 teachers of Tables 1 and 2 in one command.
#
#   bash scripts/fetch_pretrained_teachers.sh
#   TEACHERS_FROM=~/Downloads/cifar_teachers.tar bash scripts/fetch_pretrained_teachers.sh
#
# Downloads cifar_teachers.tar, the teachers that mdistiller (megvii-research/mdistiller, named in its
# README) publishes as an asset of its "checkpoints" release: resnet56, resnet110, resnet32x4, ResNet50,
# wrn_40_2 and vgg13, trained with the CRD reference code, in its checkpoint format
# ({'model': state_dict, ...}). Each is unpacked to $TEACHER_DIR/<arch>_vanilla/ckpt_epoch_240.pth,
# where scripts/run_cifar_distill.sh looks, loaded strictly into its architecture (read with
# the library's safe reader, torch.load(weights_only=True) with only the reference's pickled options
# allowed: nothing in the file runs), and reported with its parameter count
# and SHA-256.
#
# Run from the repository root. Environment:
#   TEACHERS_FROM  a cifar_teachers.tar you already have, or a folder holding one (no download)
#   TEACHER_DIR    where to install (default ./save/models)
#   TEACHERS       which teachers to install (default: all six, space-separated)
#   TEACHERS_URL   the download address (default: mdistiller's release asset)
#   FORCE=1        replace installed checkpoints that differ from the tar's (default: refuse)
#   PYTHON         the interpreter (default: python)
#
# The tar is checked before anything is written: only the expected checkpoints (optionally under
# cifar_teachers/ or ./) and their folders are accepted; absolute paths, '..', links and any other
# member are refused.
set -euo pipefail

TEACHERS_URL=${TEACHERS_URL:-https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar}
TEACHER_DIR=${TEACHER_DIR:-./save/models}
TEACHERS=${TEACHERS:-resnet56 resnet110 resnet32x4 ResNet50 wrn_40_2 vgg13}
TEACHERS_FROM=${TEACHERS_FROM:-}
FORCE=${FORCE:-0}
PYTHON=${PYTHON:-python}

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_repo_root train_student.py

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -n "$TEACHERS_FROM" ]]; then
    if [[ -d "$TEACHERS_FROM" ]]; then
        tar_file="$TEACHERS_FROM/cifar_teachers.tar"
    else
        tar_file="$TEACHERS_FROM"
    fi
    if [[ ! -f "$tar_file" ]]; then
        echo "error: TEACHERS_FROM=$TEACHERS_FROM: $tar_file not found (give the tar, or the folder holding cifar_teachers.tar)" >&2
        exit 2
    fi
else
    tar_file="$work/cifar_teachers.tar"
    echo "downloading $TEACHERS_URL" >&2
    if command -v curl >/dev/null 2>&1; then
        fetch=(curl -fL --retry 2 --connect-timeout 20 -o "$tar_file" "$TEACHERS_URL")
    else
        fetch=("$PYTHON" -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])"
               "$TEACHERS_URL" "$tar_file")
    fi
    if ! "${fetch[@]}"; then
        echo "error: could not download $TEACHERS_URL (no internet access?). Download cifar_teachers.tar from" \
             "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints by other means and run again" \
             "with TEACHERS_FROM=/path/to/cifar_teachers.tar" >&2
        exit 1
    fi
fi

# shellcheck disable=SC2086  # TEACHERS is a list of names
"$PYTHON" - "$tar_file" "$TEACHER_DIR" "$FORCE" $TEACHERS <<'PY'
"""Check the tar's members, unpack the chosen teachers, load each strictly, print count and hash."""
import hashlib
import os
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

KNOWN = ("resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13")
CHECKPOINT = "ckpt_epoch_240.pth"
PREFIXES = ((), ("cifar_teachers",))  # the release's layout: cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def relative_parts(name: str) -> tuple[str, ...]:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        fail(f"refusing tar member {name!r}: absolute paths and '..' could write outside the install folder")
    return tuple(p for p in path.parts if p != ".")


def expected_paths() -> dict[tuple[str, ...], str]:
    return {(*prefix, f"{arch}_vanilla", CHECKPOINT): arch for prefix in PREFIXES for arch in KNOWN}


def checked_members(archive: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    files = expected_paths()
    folders = {parts[:i] for parts in files for i in range(1, len(parts))}
    found: dict[str, tarfile.TarInfo] = {}
    for member in archive.getmembers():
        parts = relative_parts(member.name)
        if member.isdir() and (not parts or parts in folders):
            continue
        if parts not in files:
            fail(f"refusing tar member {member.name!r}: not one of the expected teacher checkpoints "
                 f"(<arch>_vanilla/{CHECKPOINT}, arch one of {', '.join(KNOWN)})")
        if not member.isfile():
            fail(f"refusing tar member {member.name!r}: not a regular file (links are not accepted)")
        arch = files[parts]
        if arch in found:
            fail(f"the tar holds {arch} twice ({found[arch].name!r} and {member.name!r})")
        found[arch] = member
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    tar_path, dest, force, wanted = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]
    unknown = [a for a in wanted if a not in KNOWN]
    if unknown:
        fail(f"TEACHERS: unknown teacher(s) {', '.join(unknown)}; the tar holds {', '.join(KNOWN)}")
    try:
        archive = tarfile.open(tar_path)
    except (tarfile.TarError, OSError) as err:
        fail(f"{tar_path} is not a readable tar file: {err}")
    with archive:
        members = checked_members(archive)
        missing = [a for a in wanted if a not in members]
        if missing:
            fail(f"{tar_path} has no checkpoint for {', '.join(missing)}")
        with tempfile.TemporaryDirectory() as staging:
            staged = {}
            for arch in wanted:
                target = Path(staging) / f"{arch}.pth"
                with archive.extractfile(members[arch]) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
                staged[arch] = target
            # torch and the library are imported only once the tar passed its checks (they take seconds).
            from kdzoo.helper.checkpoint import CheckpointError, load_model_weights
            from kdzoo.models import model_dict

            # Every teacher is checked before any is installed: a bad tar leaves nothing half done.
            report = []
            for arch, path in staged.items():
                model = model_dict[arch](num_classes=100)
                try:
                    # the library's safe reader: weights-only, plus the reference's argparse options
                    load_model_weights(model, path, name=arch)
                except CheckpointError as err:
                    fail(f"{members[arch].name}: {err}")
                final = dest / f"{arch}_vanilla" / CHECKPOINT
                digest = sha256(path)
                if final.exists() and sha256(final) != digest and not force:
                    fail(f"{final} exists and differs from the tar's {arch}; move it away or run with FORCE=1")
                report.append((arch, path, final, digest, sum(p.numel() for p in model.parameters())))
            for arch, path, final, digest, params in report:
                final.parent.mkdir(parents=True, exist_ok=True)
                partial = final.with_name(final.name + ".partial")
                with open(path, "rb") as src, open(partial, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
                os.replace(partial, final)
                print(f"{arch:<11} params {params:>9,d}  sha256 {digest}  {final}")

main()
PY
