#!/usr/bin/env bash
# The Python environment of a lab node, ~/cct-env, that runs the project synced to ~/cct.
# Run by deploy/onprem/cluster.yaml's setup_commands on every node, as the cluster's SSH user.
#
# CCT_PYTHON_ENV set (in ~/.cct_env): an existing environment (a venv or conda env, e.g. on
# the lab's shared filesystem, with the project's dependencies and the CUDA build of torch) is
# reused as it is, without the internet: ~/cct-env is a thin venv over it, whose Python sees
# ~/cct first and then that environment's packages, and whose `ray`, `mlflow` ... are that
# environment's commands run with this Python (so Ray's workers run it too).
# CCT_PYTHON_ENV empty: ~/cct-env is made from the internet, as on AWS (uv, torch for CUDA 12.8).
set -euo pipefail
# shellcheck disable=SC1090
source ~/.cct_env
ENV=$HOME/cct-env

if [ -z "${CCT_PYTHON_ENV:-}" ]; then
    command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh
    UV=$(command -v uv || echo ~/.local/bin/uv)
    "$UV" venv --allow-existing --python 3.11 "$ENV"
    "$UV" pip install --python "$ENV/bin/python" torch==2.13.0 torchvision \
        --index-url https://download.pytorch.org/whl/cu128
    "$UV" pip install --python "$ENV/bin/python" -e "$HOME/cct[download]"
    exit 0
fi

BASE=${CCT_PYTHON_ENV%/}
if [ ! -x "$BASE/bin/python" ]; then
    echo "CCT_PYTHON_ENV=$CCT_PYTHON_ENV: there is no $BASE/bin/python on $(hostname)" >&2
    exit 1
fi
"$BASE/bin/python" -m venv --clear --without-pip "$ENV"
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
SITE=$(site_of "$ENV/bin/python")
# .pth files run in name order: the synced project first, then the environment's packages
# (with its own .pth files, as `site` would process them there).
echo "$HOME/cct" > "$SITE/00-cct-project.pth"
echo "import site; site.addsitedir('$(site_of "$BASE/bin/python")')" > "$SITE/zz-cct-base.pth"
for script in "$BASE"/bin/*; do
    name=$(basename "$script")
    [ -f "$script" ] && [ ! -e "$ENV/bin/$name" ] || continue
    # a console script of that environment: the same script, with this Python
    if head -n 1 "$script" | grep -q "^#!$BASE/bin/python"; then
        { echo "#!$ENV/bin/python"; tail -n +2 "$script"; } > "$ENV/bin/$name"
        chmod +x "$ENV/bin/$name"
    fi
done
"$ENV/bin/python" -c 'import orchestrator, ray, torch, mlflow, optuna' || {
    echo "CCT_PYTHON_ENV=$CCT_PYTHON_ENV lacks the project's dependencies (pip install -e . there)" >&2
    exit 1
}
echo "~/cct-env: $BASE with the project in ~/cct ($("$ENV/bin/python" -c 'import ray; print("ray", ray.__version__)'))"
