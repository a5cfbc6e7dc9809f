#!/usr/bin/env bash
# End-to-end benchmark, side by side in one run: the release server with the wasm policy, the same
# server with the library called natively (serve --native-policy), and, when POLICY_SERVER is set
# (eval "$(../shared/tools/unpack target/tools)"), Kubewarden's policy-server running our
# guest/kubewarden build. Same machine, same TLS certificate, same pods, same load generator.
#
#   host/benches/e2e.sh [seconds]        results in target/bench-e2e/ (summary.csv, *.csv, *.svg)
#
# SERVERS picks the servers and their order (default "wasm native policy-server"). An entry
# `<name>=<binary>` runs another build of secrets-webhook (wasm policy) as server <name>, so a
# change is measured against the commit before it in one run, e.g.
#   SERVERS="old=/tmp/secrets-webhook-old wasm wasm old" host/benches/e2e.sh 5
# (each twice, in mirrored order, so the machine's drift over the run cancels out). The servers
# share one compile cache: the first to load a policy compiles it and keeps ~30 MiB more RSS than
# those that find it there, so compare memory across later runs.
#
# Loopback only; every run is bounded by its duration. When h2load (Debian's nghttp2-client) is
# installed, closed-loop throughput is measured with it too: a C load generator leaves more of the
# two cores to the server than ours does.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${CONNECTIONS:-16}
out=target/bench-e2e
rm -rf "$out" && mkdir -p "$out"
cargo build --release -p secrets-webhook -p secrets-webhook-load --bins
built=${CARGO_TARGET_DIR:-target}
bin=$built/release/secrets-webhook
load=$built/release/secrets-webhook-load
kubewarden_wasm=$(realpath "$built")/wasm-guest/wasm32-wasip1/release/secrets_policy_kubewarden.wasm
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

serve() { # <name> <port> [extra serve flags...]
  local name=$1 port=$2; shift 2
  "${PROGRAM:-$bin}" serve --local --cert-dir "$out/certs" --listen "127.0.0.1:$port" \
    --policy-cache-dir "$out/cache" --global-secrets-dir fixtures/global-secrets "$@" \
    > "$out/$name.log" 2>&1 &
  pids+=($!)
}

policy_server() { # <port>
  mkdir -p "$out/kubewarden"
  cat > "$out/kubewarden/policies.yml" <<EOF
flyte-secrets:
  module: file://$kubewarden_wasm
  allowedToMutate: true
  settings: {}
EOF
  KUBECONFIG=/nonexistent "$POLICY_SERVER" --ignore-kubernetes-connection-failure \
    --addr 127.0.0.1 --port "$1" --readiness-probe-port "$(($1 + 100))" \
    --cert-file "$out/certs/tls.crt" --key-file "$out/certs/tls.key" \
    --policies "$out/kubewarden/policies.yml" --policies-download-dir "$out/kubewarden" \
    > "$out/policy-server.log" 2>&1 &
  pids+=($!)
}

wait_ready() { # <url> [curl flags...]: policy-server compiles its policy first (tens of seconds)
  local url=$1; shift
  for _ in $(seq 1 600); do
    curl -sf "$@" "$url" > /dev/null && return 0
    sleep 0.2
  done
  echo "$url did not become ready" >&2; exit 1
}

scenario() { # <server> <pid> <port> <path> <label> [load flags...]
  local server=$1 pid=$2 port=$3 path=$4 label=$5; shift 5
  "$load" --addr "127.0.0.1:$port" --path "$path" --ca "$out/certs/ca.crt" --server-pid "$pid" \
    --seconds "$seconds" --warmup-seconds 2 --summary "$out/summary.csv" \
    --label "$server/$label" --csv "$out/$server-$label.csv" --svg "$out/$server-$label.svg" "$@"
}

h2load_rows() { # <server> <port> <path>
  command -v h2load > /dev/null || return 0
  local n=$((seconds * 6000))
  for proto in h1 h2; do
    local flag=(); [ "$proto" = h1 ] && flag=(--h1)
    local rate
    rate=$(h2load "${flag[@]}" -n "$n" -c "$connections" -m 1 -d fixtures/bench/typical.json \
      -H 'content-type: application/json' "https://localhost:$2$3" 2>&1 |
      awk '/^finished in/ { print $4 }')
    echo "$1,typical-closed-$proto,$connections,$rate" >> "$out/h2load.csv"
  done
}

run_all() { # <server> <pid> <port> <path>
  local s=$1 pid=$2 port=$3 path=$4 c=(--connections "$connections")
  scenario "$s" "$pid" "$port" "$path" typical-closed-h1 --body fixtures/bench/typical.json "${c[@]}" --http h1
  scenario "$s" "$pid" "$port" "$path" typical-closed-h2 --body fixtures/bench/typical.json "${c[@]}" --http h2
  scenario "$s" "$pid" "$port" "$path" typical-open2000-h1 --body fixtures/bench/typical.json "${c[@]}" --http h1 --rate 2000
  scenario "$s" "$pid" "$port" "$path" unlabelled-closed-h1 --body fixtures/bench/unlabelled.json "${c[@]}" --http h1
  scenario "$s" "$pid" "$port" "$path" small-closed-h1 --body fixtures/bench/small.json "${c[@]}" --http h1
  scenario "$s" "$pid" "$port" "$path" large-closed-h1 --body fixtures/bench/large.json "${c[@]}" --http h1
  h2load_rows "$s" "$port" "$path"
}

echo "server,scenario,connections,req_per_s" > "$out/h2load.csv"
# One server at a time, so each has both cores; the first one makes the certificate.
other_port=19450
for server in ${SERVERS:-wasm native policy-server}; do
  name=$server
  case $server in
    wasm) serve wasm 19443; port=19443; path=/mutate ;;
    native) serve native 19444 --native-policy; port=19444; path=/mutate ;;
    *=*)
      name=${server%%=*}; port=$((other_port++)); path=/mutate
      PROGRAM=${server#*=} serve "$name" "$port" ;;
    policy-server)
      if [ -z "${POLICY_SERVER:-}" ]; then
        echo "POLICY_SERVER is not set: no Kubewarden rows (eval \"\$(../shared/tools/unpack target/tools)\")" >&2
        continue
      fi
      policy_server 19445; port=19445; path=/validate/flyte-secrets ;;
    *) echo "unknown server $server" >&2; exit 2 ;;
  esac
  pid=${pids[-1]}
  if [ "$server" = policy-server ]; then
    wait_ready "http://127.0.0.1:$((port + 100))/readiness"
  else
    wait_ready "https://localhost:$port/readyz" --cacert "$out/certs/ca.crt"
  fi
  run_all "$name" "$pid" "$port" "$path"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
column -s, -t < "$out/summary.csv"
echo
column -s, -t < "$out/h2load.csv"
