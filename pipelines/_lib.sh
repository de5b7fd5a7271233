# Shared by the pipelines (sourced, never run): how to call longnet, and small helpers.
#
# longnet runs as "$LONGNET_PYTHON -m longnet_cli" (default: python3 on PATH), so that the plot
# check below asks the same interpreter. Under cron, PATH is short: set LONGNET_PYTHON to the
# python of the environment longnet is installed in (e.g. /home/me/longnet/.venv/bin/python).

LONGNET_PYTHON=${LONGNET_PYTHON:-python3}

longnet() {
    "$LONGNET_PYTHON" -m longnet_cli "$@"
}

# Exit 2 with an install hint unless LONGNET_PYTHON can import longnet and torch.
require_longnet() {
    local probe='import importlib.util as u, sys; sys.exit(not (u.find_spec("longnet_cli") and u.find_spec("torch")))'
    if ! command -v "$LONGNET_PYTHON" >/dev/null 2>&1 || ! "$LONGNET_PYTHON" -c "$probe" 2>/dev/null; then
        echo "$PIPELINE: longnet is not installed for '$LONGNET_PYTHON': run 'pip install torch==2.13.0 && pip install .' in the repository, or set LONGNET_PYTHON to the python that has it" >&2
        exit 2
    fi
}

# Whether the plot extra (matplotlib) is importable by LONGNET_PYTHON.
have_matplotlib() {
    "$LONGNET_PYTHON" -c 'import matplotlib' 2>/dev/null
}

# A step header on stderr: "==> [2/3] train (12:03:04)".
step() {
    echo "==> $* ($(date +%H:%M:%S))" >&2
}
