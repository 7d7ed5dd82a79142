# Sourced by scripts/run_*.sh: the checks and the print-or-run step they share.
# Reads PRINT_ONLY; collects the labels of failed or skipped runs in `failed` and counts runs in `count`.

failed=()
count=0

require_repo_root() {  # require_repo_root <entry point the script runs>
    if [[ ! -f "$1" ]]; then
        echo "error: run this script from the repository root ($1 not found in $PWD)" >&2
        exit 2
    fi
}

require_positive_int() {  # require_positive_int <name> <value>
    if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: $1 must be a positive integer, not '$2'" >&2
        exit 2
    fi
}

run() {  # run <label> <command...>: print the command (PRINT_ONLY=1), or run it and note a failure
    local label=$1
    shift
    count=$((count + 1))
    if [[ "${PRINT_ONLY:-0}" == 1 ]]; then
        local line
        line=$(printf '%q ' "$@")
        echo "${line% }"
    else
        echo "==> [$count] $label: $*" >&2
        "$@" || failed+=("$label")
    fi
}

skip() {  # skip <label> <reason>: a run that cannot start, reported with the failures
    count=$((count + 1))
    echo "skip: $1: $2" >&2
    failed+=("$1")
}

run_with_teacher() {  # run_with_teacher <label> <teacher file> <command...>: skip when the teacher is missing
    local label=$1 teacher=$2
    shift 2
    if [[ "${PRINT_ONLY:-0}" != 1 && ! -f "$teacher" ]]; then
        skip "$label" "teacher weights $teacher not found"
    else
        run "$label" "$@"
    fi
}

finish() {  # exit 1 when any run failed or was skipped
    if (( ${#failed[@]} )); then
        echo "failed or skipped runs (${#failed[@]} of $count): ${failed[*]}" >&2
        exit 1
    fi
}
