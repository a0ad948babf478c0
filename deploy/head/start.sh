#!/usr/bin/env bash
# The head node's start, written once for ray_cluster.yaml (AWS) and deploy/onprem/cluster.yaml:
# Ray's launcher runs it as the head's only start command on every `ray up`, as the cluster's
# SSH user. It restarts this user's Ray (token authentication, dashboard on loopback) and the
# MLflow tracking server (basic authentication, one worker on sqlite), then waits until MLflow
# answers, so that `ray up` fails here, with the server's log, instead of the first trial.
#
# It reads ~/.cct_env (written by the cluster file's setup_commands):
#   CCT_STORAGE_PATH     where Ray's results go; MLflow's artifacts go beside it (.../mlflow)
#   CCT_HEAD_ADDRESS     the address the other nodes reach this one at (default: the first of
#                        `hostname -I`, the private address on a cloud instance)
#   CCT_RAY_PORT, CCT_DASHBOARD_PORT, CCT_MLFLOW_PORT   (default 6379, 8265, 5000)
#   CCT_RAY_START_ARGS   more `ray start` options (e.g. --num-gpus, or other ports)
#   CCT_MLFLOW_ARTIFACTS where MLflow's artifacts go instead (a path or s3://...; for an
#                        S3-compatible store also MLFLOW_S3_ENDPOINT_URL / AWS_ENDPOINT_URL)
# ~/.cct/mlflow_credentials (MLFLOW_TRACKING_USERNAME / _PASSWORD, copied from your machine
# by file_mounts: deploy/up.sh makes it): that user is made MLflow's admin on the first start;
# and ~/.cct/mlflow_db.env (copied likewise; deploy/up.sh makes it empty, 0600): empty, MLflow
# keeps its runs in sqlite on this disk (~/mlflow/mlflow.db); with the line
#   CCT_MLFLOW_BACKEND_URI=postgresql+psycopg://<user>:<password>@<host>:5432/<database>
# in a lab's PostgreSQL (the database outlives the head; `pip install -e '.[postgres]'`), its
# users too (MLflow's auth tables sit beside the runs under their own alembic table). The URL
# reaches the server through its environment only: other users of the machine see command
# lines (ps), not environments.
set -euo pipefail

# shellcheck disable=SC1090
source ~/.cct_env
STATE=~/.cct
mkdir -p "$STATE" ~/mlflow
chmod 700 "$STATE" ~/.ray
# rsync keeps the modes of your machine's copies: no secret is readable by other users.
chmod 600 ~/.ray/auth_token "$STATE/mlflow_credentials"
: "${MLFLOW_TRACKING_USERNAME:?not set: ~/.cct/mlflow_credentials is missing (deploy/up.sh makes it)}"
: "${MLFLOW_TRACKING_PASSWORD:?not set: ~/.cct/mlflow_credentials is missing (deploy/up.sh makes it)}"
CCT_MLFLOW_BACKEND_URI=
if [ -f "$STATE/mlflow_db.env" ]; then
    chmod 600 "$STATE/mlflow_db.env"
    # shellcheck disable=SC1091
    source "$STATE/mlflow_db.env"
fi
ADDRESS=${CCT_HEAD_ADDRESS:-$(hostname -I | awk '{print $1}')}
MLFLOW_PORT=${CCT_MLFLOW_PORT:-5000}
ARTIFACTS=${CCT_MLFLOW_ARTIFACTS:-${CCT_STORAGE_PATH%/ray_results}/mlflow}
BACKEND=${CCT_MLFLOW_BACKEND_URI:-sqlite:///$HOME/mlflow/mlflow.db}
case $BACKEND in
    sqlite:*) AUTH_DB=sqlite:///$HOME/mlflow/mlflow_auth.db WORKERS=1 ;;
    # A database server takes several writers: more server workers, the users beside the runs.
    *) AUTH_DB=$BACKEND WORKERS=${CCT_MLFLOW_WORKERS:-4} ;;
esac

# -- the earlier start's MLflow server: by the process group recorded in its pid file. Never
# `pkill -f "mlflow server"`: Ray runs this script inside `bash -c '... mlflow server ...'`,
# whose own command line matches such a pattern, so pkill would kill the shell running it.
PIDFILE=$STATE/mlflow.pid
if [ -s "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE")
    if ps -o args= -p "$pid" 2>/dev/null | grep -q "mlflow server"; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$PIDFILE"
fi

# -- Ray: this user's Ray on this node is stopped (Ray's own convention for a cluster node),
# then the head starts with the autoscaler's config that `ray up` wrote.
ray stop
# RAY_ADDRESS reaches every Ray process started here: Ray's helpers that look "the" cluster up
# (address "auto") would otherwise pick the newest Ray on the machine, another user's included.
export RAY_ADDRESS=$ADDRESS:${CCT_RAY_PORT:-6379}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# shellcheck disable=SC2086  # CCT_RAY_START_ARGS is a list of options
ray start --head --node-ip-address="$ADDRESS" --port="${CCT_RAY_PORT:-6379}" \
    --dashboard-host=127.0.0.1 --dashboard-port="${CCT_DASHBOARD_PORT:-8265}" \
    --autoscaling-config="$HOME/ray_bootstrap_config.yaml" --disable-usage-stats \
    ${CCT_RAY_START_ARGS:-}

# -- MLflow: on sqlite (this disk) one server worker (several gunicorn workers on one sqlite
# file lose writes to "database is locked"); on PostgreSQL several. Artifacts proxied to the
# shared storage, so the trials need no bucket credentials for MLflow. It listens on the
# private address (the other nodes) and on loopback (`ray attach --port-forward`), never on a
# public interface. MLflow's job runner (GenAI scorers; this project runs no MLflow jobs)
# stays off: on a database backend it starts about eight ~250 MB worker processes.
[ -s "$STATE/mlflow_secret_key" ] ||
    python -c 'import secrets; print(secrets.token_hex(32))' > "$STATE/mlflow_secret_key"
chmod 600 "$STATE/mlflow_secret_key"
install -m 600 /dev/null "$STATE/basic_auth.ini"  # before it holds the database's password
printf '%s\n' '[mlflow]' 'default_permission = NO_PERMISSIONS' \
    "database_uri = $AUTH_DB" \
    "admin_username = $MLFLOW_TRACKING_USERNAME" \
    'authorization_function = mlflow.server.auth:authenticate_request_basic_auth' \
    > "$STATE/basic_auth.ini"
# The Host headers it answers (against DNS rebinding): from the environment, since with
# gunicorn (two addresses) mlflow refuses its --allowed-hosts option.
HOSTS="$ADDRESS,$ADDRESS:$MLFLOW_PORT,127.0.0.1,127.0.0.1:$MLFLOW_PORT,localhost,localhost:$MLFLOW_PORT"
LOOPBACK=(--gunicorn-opts "--bind 127.0.0.1:$MLFLOW_PORT")
[ "$ADDRESS" != 127.0.0.1 ] || LOOPBACK=()  # a one-machine cluster: that address is loopback
cd ~/mlflow
MLFLOW_SERVER_ALLOWED_HOSTS=$HOSTS MLFLOW_AUTH_CONFIG_PATH=$STATE/basic_auth.ini \
    MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD \
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$STATE/mlflow_secret_key") \
    MLFLOW_BACKEND_STORE_URI=$BACKEND MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    setsid nohup mlflow server --app-name basic-auth --workers "$WORKERS" \
    --host "$ADDRESS" --port "$MLFLOW_PORT" "${LOOPBACK[@]}" \
    --artifacts-destination "$ARTIFACTS" \
    > ~/mlflow/server.log 2>&1 < /dev/null &
echo $! > "$PIDFILE"

URI=http://$ADDRESS:$MLFLOW_PORT
# the driver's, via ~/.cct_env (ray exec, ray job submit's shell, `--address auto`)
printf 'export MLFLOW_TRACKING_URI=%s RAY_ADDRESS=%s\n' "$URI" "$RAY_ADDRESS" > "$STATE/head_env"
for _ in $(seq 120); do
    if python - "$URI/health" <<'EOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)
EOF
        echo "MLflow is up at $URI (and 127.0.0.1:$MLFLOW_PORT on this node)"
        exit 0
    fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    sleep 1
done
echo "MLflow did not start; the end of ~/mlflow/server.log:" >&2
tail -n 30 ~/mlflow/server.log >&2
exit 1
