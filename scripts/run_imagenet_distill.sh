#!/usr/bin/env bash
# The ImageNet table of the CRD paper (Tian et al., ICLR 2020): ResNet-34 teacher -> ResNet-18
# student, row by row. Published top-1 error (%):
#
#   Teacher 26.69 | Student 30.25 | KD 29.34 | AT 29.30 | SP 29.38 | CC 30.04 | CRD 28.83 | CRD+KD 28.62
#
# and two logit methods, published as top-1 accuracy (%) by their authors (other teacher training):
#
#   DKD 71.70 (mdistiller README) | DIST 72.07 (DIST_KD README)
#
#   bash scripts/run_imagenet_distill.sh [extra flags for every command...]
#
# Run from the repository root. Every run uses the ImageNet recipe of helper/options.py (100 epochs,
# global batch 256, lr 0.1 * batch / 256, x0.1 at 30/60/90, weight decay 1e-4, 224x224 crops).
#
# Rows:
#   Teacher  no run: the torchvision weights are the teacher; every distillation run evaluates them
#            on the val set first and prints "teacher imagenet_resnet34 (...): test acc@1 ..."
#            (torchvision lists 73.314 top-1 for resnet34-b627a593.pth: the published 26.69 error)
#   Student  train_teacher.py --model imagenet_resnet18: the vanilla student, into
#            ./save/models/imagenet_resnet18_vanilla/ (trial 1; trial t > 1: _vanilla_trial_<t-1>/)
#   KD, AT, SP, CC, CRD, CRD+KD, DKD, DIST
#            train_student.py at the paper weights (-r -a -b as in the CIFAR tables; DKD and DIST
#            take their ImageNet settings, T = 1 and DKD's beta 0.5 and 1-epoch warm-up, from the
#            registry's paper settings for this pair), into
#            ./save/student_model/S:imagenet_resnet18_T:imagenet_resnet34_imagenet_<distill>_r:<r>_a:<a>_b:<b>_<trial>/
#
# Environment:
#   DATA_FOLDER   ImageNet root with train/ and val/, one folder per class (default ./data/imagenet)
#   TEACHER       the torchvision ResNet-34 weight file (default: where torchvision downloads it,
#                 ${TORCH_HOME:-~/.cache/torch}/hub/checkpoints/resnet34-b627a593.pth)
#   CRD_MEMORY    bank (default: the paper's momentum memory bank over all 1.28M images, 2 x 655 MB
#                 per process) or queue (this project's FIFO queue of the last 16384 teacher
#                 embeddings: a few MB, for GPUs short of memory; not the paper's method)
#   TRIALS        runs per row, numbered 1..TRIALS (default 1: the paper reports single runs)
#   LAUNCHER      what runs the Python scripts (default: python; e.g. "torchrun --nproc_per_node 8")
#   PRINT_ONLY=1  print the commands, one per line, instead of running them (for cluster queues;
#                 pick rows with grep, e.g. PRINT_ONLY=1 bash scripts/run_imagenet_distill.sh | grep crd | bash)
#   DISTILL_ARGS  extra flags for the train_student.py commands only (e.g. "--nce_k 4096")
#
# Extra arguments go to every command (later flags win), e.g. --amp --channels_last, --seed 0,
# --num_workers 16. Runs go one after another; a failed run is reported and the others still run;
# the exit status is non-zero when any failed.
set -u

# label     --distill    -r    -a    -b      (paper weights, distiller_zoo/registry.py)
METHOD_ROWS=(
  "KD         kd           0.1   0.9   0"
  "AT         attention    1     0     1000"
  "SP         similarity   1     0     3000"
  "CC         correlation  1     0     0.02"
  "CRD        crd          1     0     0.8"
  "CRD+KD     crd          1     1     0.8"
  "DKD        dkd          1     0     1"
  "DIST       dist         1     0     2"
)
TEACHER_MODEL=imagenet_resnet34
STUDENT_MODEL=imagenet_resnet18

DATA_FOLDER=${DATA_FOLDER:-./data/imagenet}
TEACHER=${TEACHER:-${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints/resnet34-b627a593.pth}
CRD_MEMORY=${CRD_MEMORY:-bank}
TRIALS=${TRIALS:-1}
LAUNCHER=${LAUNCHER:-python}
PRINT_ONLY=${PRINT_ONLY:-0}
DISTILL_ARGS=${DISTILL_ARGS:-}

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_repo_root train_student.py
require_positive_int TRIALS "$TRIALS"
if [[ "$CRD_MEMORY" != bank && "$CRD_MEMORY" != queue ]]; then
    echo "error: CRD_MEMORY must be bank or queue, not '$CRD_MEMORY'" >&2
    exit 2
fi

# shellcheck disable=SC2206  # LAUNCHER and DISTILL_ARGS may hold several words
launcher=($LAUNCHER)
# shellcheck disable=SC2206
distill_args=($DISTILL_ARGS)
for (( trial = 1; trial <= TRIALS; trial++ )); do
    run "Student:$trial" "${launcher[@]}" train_teacher.py --model "$STUDENT_MODEL" --dataset imagenet \
        --data_folder "$DATA_FOLDER" --trial "$((trial - 1))" "$@"
    for row in "${METHOD_ROWS[@]}"; do
        read -r label distill r a b <<<"$row"
        memory=()
        [[ "$distill" == crd ]] && memory=(--crd_memory "$CRD_MEMORY")
        cmd=("${launcher[@]}" train_student.py --path_t "$TEACHER" --model_t "$TEACHER_MODEL"
             --model_s "$STUDENT_MODEL" --dataset imagenet --data_folder "$DATA_FOLDER" --distill "$distill"
             ${memory[@]+"${memory[@]}"} -r "$r" -a "$a" -b "$b" --trial "$trial"
             ${distill_args[@]+"${distill_args[@]}"} "$@")
        run_with_teacher "$label:$trial" "$TEACHER" "${cmd[@]}"
    done
done

finish
