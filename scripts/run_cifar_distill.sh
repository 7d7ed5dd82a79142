#!/usr/bin/env bash
# Distil every teacher/student pair of Tables 1 and 2 (CRD paper, CIFAR-100) with every method of
# the tables, at the paper weights, TRIALS times each.
#
#   bash scripts/run_cifar_distill.sh [extra train_student.py flags...]
#
# Run from the repository root, after scripts/run_cifar_vanilla.sh: the teachers are read from
# $TEACHER_DIR/<teacher>_vanilla/ckpt_epoch_240.pth. Students land in
# ./save/student_model/S:<student>_T:<teacher>_cifar100_<distill>_r:<r>_a:<a>_b:<b>_<trial>/
# (..._b:<b>_ls_<trial>/ for the logit-standardisation rows), which scripts/collect_results.py
# turns into the tables.
#
# Environment:
#   TRIALS       trials per (method, pair), numbered 1..TRIALS (default 3)
#   TEACHER_DIR  parent of the teacher run folders (default ./save/models)
#   DATA_FOLDER  folder holding cifar-100-python/ (default ./data)
#   PRINT_ONLY=1 print the commands, one per line, instead of running them (for cluster queues)
#   LAUNCHER     what runs train_student.py (default: python; e.g. "torchrun --nproc_per_node 4")
#   PYTHON       the interpreter used to ask the library which methods exist (default: python)
#
# Extra arguments are appended to every command (later flags win), e.g. --device cpu, --seed 0.
# The contrastive rows (CRD, CRD+KD, RRD, RRD+KD, WCoRD+KD) are generated only for the methods that
# kdzoo.distiller_zoo.registry.METHODS provides; the others are skipped with a note on stderr.
# FSP and KDSVD need identical student/teacher channel lists, so they run only on the pairs marked in
# PAIRS (the table's N/A for wrn-40-2 -> wrn-40-1, and no cross-family pair: FSP is absent from Table 2).
# A weight written "-" is not passed: train_student.py then takes the registry's paper value for
# the pair (ReviewKD's -b, DKD's own beta, ...).
# Runs go one after another; a failed run is reported and the others still run; the exit status is
# non-zero when any failed.
set -u

# label          --distill   -r    -a    -b      [more flags]   (paper weights, distiller_zoo/registry.py + paper_tables)
METHOD_ROWS=(
  "KD            kd          0.1   0.9   0"
  "FitNet        hint        1     0     100"
  "AT            attention   1     0     1000"
  "SP            similarity  1     0     3000"
  "CC            correlation 1     0     0.02"
  "VID           vid         1     0     1"
  "RKD           rkd         1     0     1"
  "PKT           pkt         1     0     30000"
  "AB            abound      1     0     1"
  "FT            factor      1     0     200"
  "FSP           fsp         1     0     50"
  "NST           nst         1     0     50"
  "CRD           crd         1     0     0.8"
  "CRD+KD        crd         1     1     0.8"
  "RRD           rrd         1     0     1"
  "RRD+KD        rrd         1     1     1"
  "WCoRD+KD      wcord       1     1     0.8"
  "ReviewKD      reviewkd    1     0     -"
  "OFD           ofd         1     0     0.001"
  "KDSVD         kdsvd       1     0     1"
  # Logit methods. DKD's own beta (per pair), temperature 4 and 20-epoch warm-up, and DIST's
  # tau 4, come from the registry's paper settings. +LS: logit standardisation with the authors'
  # recommended base temperature 2 and KD weight 9 (for DKD, 9 x both of its weights: -b 9).
  "DKD           dkd         1     0     1"
  "DIST          dist        1     0     2"
  "KD+LS         kd          0.1   9     0       --logit_stand --kd_T 2"
  "DKD+LS        dkd         1     0     9       --logit_stand --kd_T 2"
)

# teacher      student       same channels: FSP and KDSVD run (Table 1: same family, then Table 2: cross family)
PAIRS=(
  "wrn_40_2     wrn_16_2      yes"
  "wrn_40_2     wrn_40_1      no"
  "resnet56     resnet20      yes"
  "resnet110    resnet20      yes"
  "resnet110    resnet32      yes"
  "resnet32x4   resnet8x4     yes"
  "vgg13        vgg8          yes"
  "vgg13        MobileNetV2   no"
  "ResNet50     MobileNetV2   no"
  "ResNet50     vgg8          no"
  "resnet32x4   ShuffleV1     no"
  "resnet32x4   ShuffleV2     no"
  "wrn_40_2     ShuffleV1     no"
)

# Methods that are not part of the library yet in every checkout (distiller_zoo/registry.py PENDING_METHODS).
CONTRASTIVE=(crd rrd wcord)

TRIALS=${TRIALS:-3}
TEACHER_DIR=${TEACHER_DIR:-./save/models}
DATA_FOLDER=${DATA_FOLDER:-./data}
PRINT_ONLY=${PRINT_ONLY:-0}
LAUNCHER=${LAUNCHER:-python}
PYTHON=${PYTHON:-python}

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_repo_root train_student.py
require_positive_int TRIALS "$TRIALS"

# Which contrastive methods does this checkout provide? (the same test as
# `python -c "from kdzoo.distiller_zoo.registry import METHODS; print('crd' in METHODS)"`, per method)
probe="from kdzoo.distiller_zoo.registry import METHODS; print(' '.join(m for m in '${CONTRASTIVE[*]}'.split() if m in METHODS))"
if ! available=$("$PYTHON" -c "$probe"); then
    echo "note: could not import kdzoo.distiller_zoo.registry with '$PYTHON'; assuming no contrastive method is available" >&2
    available=""
fi
declare -A skip=()
missing=()
for m in "${CONTRASTIVE[@]}"; do
    if [[ " $available " != *" $m "* ]]; then
        skip[$m]=1
        missing+=("$m")
    fi
done
if (( ${#skip[@]} )); then
    skipped_labels=()
    for row in "${METHOD_ROWS[@]}"; do
        read -r label distill _ <<<"$row"
        [[ -n "${skip[$distill]:-}" ]] && skipped_labels+=("$label")
    done
    echo "note: skipping ${skipped_labels[*]}: --distill ${missing[*]} not available in kdzoo.distiller_zoo.registry.METHODS yet" >&2
fi

# shellcheck disable=SC2206  # LAUNCHER may hold several words
launcher=($LAUNCHER)
for (( trial = 1; trial <= TRIALS; trial++ )); do
    for row in "${METHOD_ROWS[@]}"; do
        read -r label distill r a b_row more <<<"$row"
        # shellcheck disable=SC2206  # the row's extra flags are words
        more=($more)
        [[ -n "${skip[$distill]:-}" ]] && continue
        for pair in "${PAIRS[@]}"; do
            read -r teacher student same_channels <<<"$pair"
            [[ ( "$distill" == fsp || "$distill" == kdsvd ) && "$same_channels" != yes ]] && continue
            weights=(-r "$r" -a "$a")
            [[ "$b_row" != - ]] && weights+=(-b "$b_row")
            path_t="$TEACHER_DIR/${teacher}_vanilla/ckpt_epoch_240.pth"
            cmd=("${launcher[@]}" train_student.py --path_t "$path_t" --model_s "$student"
                 --distill "$distill" "${weights[@]}" ${more[@]+"${more[@]}"} --trial "$trial"
                 --data_folder "$DATA_FOLDER" "$@")
            run_with_teacher "$label:$teacher->$student:$trial" "$path_t" "${cmd[@]}"
        done
    done
done

finish
