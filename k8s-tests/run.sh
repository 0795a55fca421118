#!/usr/bin/env bash
# The chart on a live kind cluster, from zero: k8s-tests/run.sh [--keep]
#
# Creates the kind cluster `llmb` (or reuses it), then runs the chart README's walkthrough "From
# zero on kind" command by command (tests/deploy/test_k8s_run_script.py checks that every one of
# its lines is here, in order), then the pytest suite k8s-tests/ against the release it installed.
# Needs Docker, kind, kubectl and helm on PATH, and the test dependencies in the Python given as
# PYTHON (default python3): pip install -e '.[test]'.
#
#   --keep   leave the cluster up afterwards (a cluster it reused is never deleted)
#
# Every step is bounded: `timeout` around each command, kubectl and helm with their own
# --timeout. On failure it prints the pods, their logs and the events of the namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=llmb
NAMESPACE=llm-batcher
RELEASE=llm-batcher
PYTHON=${PYTHON:-python3}
keep=false
created=false
forward=""

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

for arg in "$@"; do
  case $arg in
    --keep) keep=true ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $arg" >&2; usage >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }

missing=()
for tool in docker kind kubectl helm timeout curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run.sh needs Docker, kind, kubectl, helm, timeout and curl on PATH; missing: ${missing[*]}" >&2
  exit 1
fi
if ! timeout 30 docker info >/dev/null 2>&1; then
  echo "run.sh needs a running Docker daemon: 'docker info' failed" >&2
  exit 1
fi
if ! timeout 30 "$PYTHON" -c 'import kubernetes, pytest, httpx' 2>/dev/null; then
  echo "run.sh needs the test dependencies in $PYTHON: pip install -e '.[test]'" >&2
  exit 1
fi

dump() {
  say "pods, logs and events of namespace $NAMESPACE"
  timeout 60 kubectl --namespace "$NAMESPACE" get pods --output wide --request-timeout=30s || true
  local pod
  for pod in $(timeout 60 kubectl --namespace "$NAMESPACE" get pods --output name --request-timeout=30s 2>/dev/null); do
    echo "--- logs of $pod"
    timeout 60 kubectl --namespace "$NAMESPACE" logs "$pod" --all-containers --tail=200 --request-timeout=30s || true
    timeout 60 kubectl --namespace "$NAMESPACE" logs "$pod" --all-containers --tail=50 --previous --request-timeout=30s 2>/dev/null || true
  done
  timeout 60 kubectl --namespace "$NAMESPACE" get events --sort-by=.lastTimestamp --request-timeout=30s || true
}

finish() {
  local status=$?
  if [ -n "$forward" ]; then kill "$forward" 2>/dev/null || true; fi
  if [ "$status" -ne 0 ]; then dump; fi
  if [ "$created" = true ] && [ "$keep" = false ]; then
    say "deleting the kind cluster $CLUSTER (--keep leaves it up)"
    timeout 300 kind delete cluster --name "$CLUSTER" || true
  elif [ "$created" = false ]; then
    echo "the cluster $CLUSTER was there before: left up"
  fi
  exit "$status"
}
trap finish EXIT

say "1. a cluster, and the images in its node"
if timeout 60 kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "reusing the kind cluster $CLUSTER"
  timeout 60 kind export kubeconfig --name "$CLUSTER"
else
  created=true
  timeout 600 kind create cluster --name llmb
fi
timeout 1800 images/build.sh
timeout 600 kind load docker-image llm-batcher-api:0.1.0 llm-batcher-worker:0.1.0 --name llmb

say "2. install, and wait until the API is ready and the workers are up"
if timeout 60 helm status "$RELEASE" --namespace "$NAMESPACE" >/dev/null 2>&1; then
  echo "a release $RELEASE is left from an earlier run: uninstalling it first"
  timeout 600 helm uninstall "$RELEASE" --namespace "$NAMESPACE" --wait --timeout 5m
fi
timeout 600 helm install llm-batcher charts/llm-batcher --namespace llm-batcher --create-namespace
timeout 330 kubectl --namespace llm-batcher rollout status deployment/llm-batcher-api --timeout=300s
timeout 330 kubectl --namespace llm-batcher rollout status deployment/llm-batcher-worker --timeout=300s

say "3. one streamed answer through a port-forward, and the release's own check"
timeout 600 kubectl --namespace llm-batcher port-forward service/llm-batcher-api 8000:8000 &
forward=$!
for _ in $(seq 60); do
  if timeout 2 curl --silent --output /dev/null http://localhost:8000/healthz; then break; fi
  sleep 1
done
curl -N --max-time 60 'http://localhost:8000/generate?context=Hello%20from%20Kubernetes'
echo
kill "$forward" 2>/dev/null || true  # it may have ended on its own
forward=""
timeout 600 helm test llm-batcher --namespace llm-batcher

say "4. Prometheus and KEDA, then autoscale on the queue"
timeout 120 helm repo add prometheus-community https://prometheus-community.github.io/helm-charts
timeout 120 helm repo add kedacore https://kedacore.github.io/charts
if ! timeout 60 helm status kube-prometheus-stack --namespace monitoring >/dev/null 2>&1; then
  timeout 900 helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack --namespace monitoring --create-namespace --wait --timeout 10m --set grafana.enabled=false --set alertmanager.enabled=false
fi
if ! timeout 60 helm status keda --namespace keda >/dev/null 2>&1; then
  timeout 900 helm install keda kedacore/keda --namespace keda --create-namespace --wait --timeout 10m
fi
timeout 600 helm upgrade llm-batcher charts/llm-batcher --namespace llm-batcher --reuse-values --set monitoring.serviceMonitor.enabled=true --set monitoring.serviceMonitor.additionalLabels.release=kube-prometheus-stack --set worker.autoscaling.mode=keda --set worker.autoscaling.minReplicas=0 --set worker.autoscaling.keda.serverAddress=http://kube-prometheus-stack-prometheus.monitoring.svc:9090

say "the suite k8s-tests/ against release $RELEASE in namespace $NAMESPACE"
export LLMB_K8S_RELEASE=$RELEASE LLMB_K8S_NAMESPACE=$NAMESPACE LLMB_K8S_UNINSTALL=1 LLMB_K8S_REQUIRE=1
# The suite's own bound: the slow scaling tests are marked and bounded one by one as well.
timeout 5400 "$PYTHON" -m pytest k8s-tests -v -p no:randomly -p no:cacheprovider
