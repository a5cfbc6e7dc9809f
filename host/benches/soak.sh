#!/usr/bin/env bash
# Soak: the release server (wasm policy) on loopback at a steady rate for a bounded time, with its
# resident memory sampled once a second.
#
#   host/benches/soak.sh [seconds=600] [rate=300] [warmup-seconds=60]
#
# The warm-up is served at the same rate but not measured: during it the allocator's per-thread
# arenas and the pooled instance slots are touched for the first time. Results in target/soak/:
# rss.csv (second, MiB), latency.csv, summary.csv, server.log. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-600}
rate=${2:-300}
warmup=${3:-60}
out=target/soak
rm -rf "$out" && mkdir -p "$out"
cargo build --release -p secrets-webhook -p secrets-webhook-load --bins
bin=target/release/secrets-webhook
port=19543
"$bin" serve --local --cert-dir "$out/certs" --listen "127.0.0.1:$port" \
  --policy-cache-dir "$out/cache" --global-secrets-dir fixtures/global-secrets \
  > "$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf --cacert "$out/certs/ca.crt" "https://localhost:$port/readyz" > /dev/null && break
  sleep 0.2
done
echo "server RSS when ready: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status)"
target/release/secrets-webhook-load --addr "127.0.0.1:$port" --ca "$out/certs/ca.crt" \
  --server-pid "$pid" --body fixtures/bench/typical.json --connections 4 --http h1 \
  --rate "$rate" --seconds "$seconds" --warmup-seconds "$warmup" \
  --rss-csv "$out/rss.csv" --csv "$out/latency.csv" --summary "$out/summary.csv" --label soak
# RSS at each minute of the measurement.
awk -F, 'NR > 1 && $1 % 60 == 0 {printf "  %4ds %s MiB\n", $1, $2}' "$out/rss.csv"
kill "$pid"; wait "$pid" || true
grep -c '"level":"ERROR"\|ERROR' "$out/server.log" | sed 's/^/server log ERROR lines: /' || true
