#!/usr/bin/env bash
# Starts two demo upstreams and the gateway in front of them; Ctrl-C stops all three.
set -u
cd "$(dirname "$0")/.."
FASTGW=.venv/bin/fastgw
pids=()
cleanup() {
  trap - INT TERM EXIT
  kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null
}
trap cleanup INT TERM EXIT
$FASTGW demo-upstream --port 9001 --name a & pids+=($!)
$FASTGW demo-upstream --port 9002 --name b & pids+=($!)
$FASTGW run -c examples/quickstart.yaml & pids+=($!)
echo "fastgw: try  curl -s localhost:8080/  (Ctrl-C stops the gateway and the demo upstreams)"
wait -n "${pids[@]}"
