#!/usr/bin/env bash
# `ray up` for ray_cluster.yaml and deploy/onprem/cluster.yaml, run on your machine:
#   deploy/up.sh ray_cluster.yaml [ray up options, e.g. -y]
# First it refuses a cluster file with a placeholder left (EDIT-..., REPLACE-AMI, the example
# addresses), naming the lines, before anything is launched. Then it prepares what the nodes
# get from your machine, each made once and kept 0600 (rsync keeps the mode on every node):
#   ~/.ray/auth_token           Ray's token (ray get-auth-token --generate)
#   ~/.cct/mlflow_credentials   the MLflow server's user and password (generated)
#   ~/.cct/mlflow_db.env        the MLflow server's database (empty: sqlite on the head)
# and deploy/provenance/provenance.json: the commit and whether the tree was dirty, since
# rsync leaves .git behind (runs on the cluster read it). Then `ray up`, from the repository
# root, so that the project syncs.
set -euo pipefail
CONFIG=$(realpath "${1:?usage: deploy/up.sh CLUSTER_FILE [ray up options]}")
shift
cd "$(dirname "$0")/.."

# (YAML comments are left out: they name the placeholders to explain them)
if awk '{ v = $0; sub(/(^|[ \t])#.*/, "", v) }
        v ~ /EDIT-|REPLACE-AMI|ami-0123456789abcdef0|192\.0\.2\./ { print FILENAME ":" NR ": " $0; bad = 1 }
        END { exit !bad }' "$CONFIG"; then
    echo "deploy/up.sh: $CONFIG still has the placeholders above: put your values there" >&2
    exit 2
fi

umask 077
mkdir -p ~/.ray ~/.cct
[ -s ~/.ray/auth_token ] || ray get-auth-token --generate > /dev/null
[ -s ~/.cct/mlflow_credentials ] || python3 -c 'import secrets
print(f"MLFLOW_TRACKING_USERNAME=cct\nMLFLOW_TRACKING_PASSWORD={secrets.token_urlsafe(24)}")' \
    > ~/.cct/mlflow_credentials
# The head's MLflow database: empty is sqlite on the head; a lab's PostgreSQL is one line,
# CCT_MLFLOW_BACKEND_URI=postgresql+psycopg://<user>:<password>@<host>:5432/<database>
[ -f ~/.cct/mlflow_db.env ] || : > ~/.cct/mlflow_db.env
chmod 600 ~/.ray/auth_token ~/.cct/mlflow_credentials ~/.cct/mlflow_db.env
umask 022
python3 -m cct.provenance --write deploy/provenance/provenance.json
exec ray up "$CONFIG" "$@"
