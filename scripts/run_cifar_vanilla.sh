#!/usr/bin/env bash
# Train the six teachers of the CRD/WCoRD/RRD CIFAR-100 tables with the reference recipe
# (train_teacher.py defaults: 240 epochs, batch 64, lr 0.05, x0.1 at 150/180/210).
#
#   bash scripts/run_cifar_vanilla.sh [extra train_teacher.py flags...]
#
# Run from the repository root. Each teacher lands in $save_folder/<model>_vanilla/ (default
# ./save/models), whose ckpt_epoch_240.pth is what scripts/run_cifar_distill.sh reads.
#
# Environment:
#   DATA_FOLDER  folder holding cifar-100-python/ (default ./data)
#   PRINT_ONLY=1 print the commands, one per line, instead of running them (for cluster queues)
#   LAUNCHER     what runs train_teacher.py (default: python; e.g. "torchrun --nproc_per_node 4")
#
# Extra arguments are appended to every command (later flags win), e.g. --device cpu, -t 1, --seed 0.
# The runs go one after another; a failed run is reported and the others still run; the exit
# status is non-zero when any failed.
set -u

TEACHERS=(wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50)

DATA_FOLDER=${DATA_FOLDER:-./data}
PRINT_ONLY=${PRINT_ONLY:-0}
LAUNCHER=${LAUNCHER:-python}

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_repo_root train_teacher.py

# shellcheck disable=SC2206  # LAUNCHER may hold several words
launcher=($LAUNCHER)
for model in "${TEACHERS[@]}"; do
    run "$model" "${launcher[@]}" train_teacher.py --model "$model" --data_folder "$DATA_FOLDER" "$@"
done
finish
