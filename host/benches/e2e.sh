#!/usr/bin/env bash
# End-to-end benchmark: the release server on loopback, driven by secrets-webhook-load, once with
# the wasm policy and once with the library called natively, side by side in one run.
#
#   host/benches/e2e.sh [seconds]        results in target/bench-e2e/ (summary.csv, *.csv, *.svg)
#
# Loopback only; every run is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
out=target/bench-e2e
rm -rf "$out" && mkdir -p "$out"
cargo build --release -p secrets-webhook --bins
bin=target/release/secrets-webhook
load=target/release/secrets-webhook-load

run_server() { # <name> <port> [extra serve flags...]
  local name=$1 port=$2; shift 2
  "$bin" serve --local --cert-dir "$out/certs" --listen "127.0.0.1:$port" \
    --policy-cache-dir "$out/cache" --global-secrets-dir fixtures/global-secrets "$@" \
    > "$out/$name.log" 2>&1 &
  echo $!
}

wait_ready() { # <port>
  for _ in $(seq 1 100); do
    curl -sf --cacert "$out/certs/ca.crt" "https://localhost:$1/readyz" > /dev/null && return 0
    sleep 0.2
  done
  echo "server on $1 did not become ready" >&2; exit 1
}

scenario() { # <policy> <pid> <port> <label> [load flags...]
  local policy=$1 pid=$2 port=$3 label=$4; shift 4
  "$load" --addr "127.0.0.1:$port" --ca "$out/certs/ca.crt" --server-pid "$pid" \
    --seconds "$seconds" --warmup-seconds 2 --summary "$out/summary.csv" \
    --label "$policy/$label" --csv "$out/$policy-$label.csv" --svg "$out/$policy-$label.svg" "$@"
}

for policy in wasm native; do
  port=19443; flags=()
  if [ "$policy" = native ]; then port=19444; flags=(--native-policy); fi
  pid=$(run_server "$policy" "$port" "${flags[@]}")
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_ready "$port"
  scenario "$policy" "$pid" "$port" typical-closed-h1 --body fixtures/bench/typical.json --connections 8 --http h1
  scenario "$policy" "$pid" "$port" typical-closed-h2 --body fixtures/bench/typical.json --connections 8 --http h2
  scenario "$policy" "$pid" "$port" typical-open2000-h1 --body fixtures/bench/typical.json --connections 8 --http h1 --rate 2000
  scenario "$policy" "$pid" "$port" small-closed-h1 --body fixtures/bench/small.json --connections 8 --http h1
  scenario "$policy" "$pid" "$port" large-closed-h1 --body fixtures/bench/large.json --connections 8 --http h1
  kill "$pid"; wait "$pid" || true
done
column -s, -t < "$out/summary.csv"
