#!/usr/bin/env bash
# A real-cluster check for machines with Docker and kind (`make e2e-kind`):
#   1. create a kind cluster (or reuse one of that name);
#   2. build the image from the Dockerfile and load it into the cluster (`kind load`);
#   3. `helm upgrade --install` the chart with values-dev.yaml (bundled Redis and Mailpit);
#   4. apply an EmailTemplate from examples/ and wait for its Ready condition (the operator);
#   5. send it through a port-forward with a token minted inside the ingress pod;
#   6. find the email in Mailpit through its API, and its status `sent` in ours;
#   7. `helm test`;
#   8. clean up on any exit: the cluster if this run created it; in a cluster it reused, the
#      template and the release.
# Every kubectl/helm call names the kind cluster's context: it never touches another cluster.
#
# Usage: scripts/e2e-kind.sh [--dry-run] [--keep] [--cluster NAME]
#   --dry-run  print each command instead of running it (needs none of the tools)
#   --keep     leave the cluster and release in place for a look around
# Environment: E2E_TIMEOUT (seconds for each wait, default 300), E2E_WORK_DIR (keep the
# generated files there instead of a temporary folder).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER=email-service-e2e
DRY_RUN=0
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP=1 ;;
    --cluster) CLUSTER=${2:?--cluster needs a name}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "e2e-kind: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

CONTEXT="kind-$CLUSTER"
NAMESPACE=email-service
RELEASE=email-service
CHART=charts/email-service
VALUES="$CHART/values-dev.yaml"
IMAGE_REPOSITORY=email-service
IMAGE_TAG=e2e
IMAGE="$IMAGE_REPOSITORY:$IMAGE_TAG"
# The chart's object names for this release (`helm template` in the tests checks them).
INGRESS="$RELEASE-ingress"
MAILPIT="$RELEASE-mailpit"
TEMPLATE_FILE=examples/emailtemplates/welcome.yaml
TEMPLATE=welcome
TIMEOUT=${E2E_TIMEOUT:-300}
RECIPIENT="e2e-$(date +%s)-$RANDOM@example.com"

if [ -n "${E2E_WORK_DIR:-}" ]; then
  WORK=$E2E_WORK_DIR
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d)
fi

# Dry-run lines go to fd 3 (stdout), so a step whose output is captured still shows.
exec 3>&1
say() { printf '# %s\n' "$*" >&3; }
show() { printf '+' >&3; printf ' %q' "$@" >&3; printf '\n' >&3; }
run() {
  show "$@"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}
# Prints the command's output; in a dry run, $1 (a placeholder) instead.
capture() {
  local placeholder=$1; shift
  if [ "$DRY_RUN" = 1 ]; then show "$@"; printf '%s' "$placeholder"; else "$@"; fi
}
kube() { run kubectl --context "$CONTEXT" --namespace "$NAMESPACE" "$@"; }

# Polls "$@" until it succeeds or the deadline passes (what is awaited has a condition, always).
# In a dry run the check runs once, and prints what it would ask.
wait_until() {
  local what=$1 seconds=$2; shift 2
  if [ "$DRY_RUN" = 1 ]; then "$@"; return 0; fi
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "e2e-kind: gave up waiting for $what after ${seconds}s" >&2
      return 1
    fi
    sleep 2
  done
}

PIDS=()
CREATED=0
cleanup() {
  local status=$?
  # (The ${a[@]+...} form: bash before 4.4, as on macOS, calls an empty array unbound.)
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then
    say "kept: kubectl --context $CONTEXT -n $NAMESPACE get pods; kind delete cluster --name $CLUSTER"
  elif [ "$CREATED" = 1 ]; then
    say "clean up: delete the cluster this run created"
    run kind delete cluster --name "$CLUSTER" || true
  else
    say "clean up: the template (while the operator runs to release its finalizer), the release"
    kube delete emailtemplate "$TEMPLATE" --ignore-not-found --timeout 60s || true
    run helm uninstall "$RELEASE" --kube-context "$CONTEXT" --namespace "$NAMESPACE" --wait || true
  fi
  [ -n "${E2E_WORK_DIR:-}" ] || rm -rf "$WORK"
  if [ "$status" != 0 ]; then
    echo "e2e-kind: FAILED" >&2
  elif [ "$DRY_RUN" = 1 ]; then
    say "e2e-kind: dry run, nothing was run"
  else
    say "e2e-kind: passed"
  fi
  exit "$status"
}

# Starts `kubectl port-forward` to svc/$1 port $2 on a free local port; sets the variable $3.
port_forward() {
  local service=$1 port=$2 var=$3 log="$WORK/port-forward-$1.log"
  if [ "$DRY_RUN" = 1 ]; then
    show kubectl --context "$CONTEXT" --namespace "$NAMESPACE" port-forward "svc/$service" ":$port"
    printf -v "$var" '%s' "LOCAL_PORT"
    return 0
  fi
  # ":$port": kubectl picks a free local port and says which.
  kubectl --context "$CONTEXT" --namespace "$NAMESPACE" port-forward "svc/$service" ":$port" \
    >"$log" 2>&1 &
  PIDS+=($!)
  local pid=$! found=""
  forwarding() {
    # kubectl gave up (no such service, no ready pod): no use waiting.
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "e2e-kind: port-forward failed" >&2; exit 1; }
    found=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$log" | head -n 1)
    [ -n "$found" ]
  }
  wait_until "the port-forward to svc/$service" 30 forwarding
  printf -v "$var" '%s' "$found"
}

# The email in Mailpit: GET /api/v1/messages lists the newest first, with To and Subject.
email_arrived() {
  local url="http://127.0.0.1:$MAILPIT_PORT/api/v1/messages?limit=100"
  if [ "$DRY_RUN" = 1 ]; then show curl -sS --max-time 10 "$url"; return 0; fi
  local found=0
  curl -sS --max-time 10 "$url" | python3 -c '
import json, sys
recipient, name = sys.argv[1], sys.argv[2]
for message in json.load(sys.stdin)["messages"]:
    if recipient in [to["Address"] for to in message["To"]]:
        print("e2e-kind: in Mailpit:", message["Subject"], file=sys.stderr)
        sys.exit(0 if name in message["Subject"] else 3)
sys.exit(1)' "$RECIPIENT" "Kind" || found=$?
  # 3: it arrived, rendered wrong (the first name is missing from the subject): no use waiting.
  [ "$found" != 3 ] || { echo "e2e-kind: the email's subject lacks the data sent" >&2; exit 1; }
  [ "$found" = 0 ]
}

# Our own status API agrees: `sent` (a failed or dead message ends the run at once).
message_sent() {
  local url="http://127.0.0.1:$INGRESS_PORT/v1/messages/$MESSAGE_ID" status
  if [ "$DRY_RUN" = 1 ]; then
    show curl -sS --max-time 10 "$url" -H "Authorization: Bearer $TOKEN"
    return 0
  fi
  status=$(curl -sS --max-time 10 "$url" -H "Authorization: Bearer $TOKEN" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])') || return 1
  case "$status" in
    sent) return 0 ;;
    failed|dead) echo "e2e-kind: message $MESSAGE_ID is $status" >&2; exit 1 ;;
    *) return 1 ;;
  esac
}

# Sourced (the tests run the functions above on their own): define them, run nothing.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi
trap cleanup EXIT

say "e2e-kind: cluster $CLUSTER (context $CONTEXT), release $RELEASE in $NAMESPACE, work dir $WORK"
if [ "$DRY_RUN" = 0 ]; then
  for tool in docker kind kubectl helm curl python3; do
    command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is needed" >&2; exit 1; }
  done
  docker info >/dev/null 2>&1 || { echo "e2e-kind: Docker is not running" >&2; exit 1; }
fi

say "1. a kind cluster"
if [ "$DRY_RUN" = 0 ] && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "reusing the existing cluster $CLUSTER"
else
  CREATED=1
  run kind create cluster --name "$CLUSTER" --wait 120s
fi

say "2. the image, built from the Dockerfile and loaded into the cluster"
run docker build --tag "$IMAGE" .
run kind load docker-image "$IMAGE" --name "$CLUSTER"

say "3. the chart with the dev values (bundled Redis, Mailpit) and the loaded image"
# pullPolicy Never: the nodes use the loaded image, never a registry's.
run helm upgrade --install "$RELEASE" "$CHART" --kube-context "$CONTEXT" \
  --namespace "$NAMESPACE" --create-namespace --values "$VALUES" \
  --set "image.repository=$IMAGE_REPOSITORY" --set "image.tag=$IMAGE_TAG" \
  --set image.pullPolicy=Never --wait --timeout "${TIMEOUT}s"

say "4. an EmailTemplate, compiled by the operator"
# The example names the `default` namespace; the operator watches the release's.
manifest="$WORK/emailtemplate.yaml"
sed "s/^  namespace: .*/  namespace: $NAMESPACE/" "$TEMPLATE_FILE" >"$manifest"
kube apply --filename "$manifest"
kube wait --for=condition=Ready "emailtemplate/$TEMPLATE" --timeout "${TIMEOUT}s"

say "5. send it through a port-forward, with a token minted in the ingress pod"
port_forward "$RELEASE" 80 INGRESS_PORT
port_forward "$MAILPIT" 8025 MAILPIT_PORT
TOKEN=$(capture TOKEN kubectl --context "$CONTEXT" --namespace "$NAMESPACE" exec \
  "deploy/$INGRESS" -- email-service token --subject e2e-kind)
body=$(printf '{"template": "%s", "to": "%s", "data": {"user": {"first_name": "Kind", "email": "%s"}, "login_url": "https://app.example.com/login", "plan": "pro"}}' \
  "$TEMPLATE" "$RECIPIENT" "$RECIPIENT")
answer=$(capture '{"id": "MESSAGE_ID", "status": "queued"}' curl -sS --fail-with-body --max-time 30 \
  -X POST "http://127.0.0.1:$INGRESS_PORT/v1/messages" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d "$body")
MESSAGE_ID=$(printf '%s' "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
say "accepted: message $MESSAGE_ID to $RECIPIENT"

say "6. the email in Mailpit, and its status sent"
wait_until "the email to $RECIPIENT in Mailpit" "$TIMEOUT" email_arrived
wait_until "status sent for message $MESSAGE_ID" 60 message_sent

say "7. helm test"
run helm test "$RELEASE" --kube-context "$CONTEXT" --namespace "$NAMESPACE" --logs \
  --timeout "${TIMEOUT}s"
