#!/usr/bin/env bash
# Pod creation through a real kube-apiserver + etcd (the envtest pattern, ../shared/tools), in one
# run: with no webhook, with ours (the release binary, wasm policy), and with Kubewarden's
# policy-server running our guest/kubewarden build. Pods are created one after another over one
# keep-alive connection (curl), like a controller creating task pods at a low rate; our server's own
# time per review is read from its log (`micros`: headers in to response out).
#
#   eval "$(../shared/tools/unpack target/tools)"
#   host/benches/apiserver.sh [pods=300]      results in target/bench-apiserver/
#
# Loopback only; bounded by the pod count.
set -euo pipefail
cd "$(dirname "$0")/../.."
pods=${1:-300}
: "${TEST_KUBE_APISERVER:?set by ../shared/tools/unpack}" "${TEST_ETCD:?}" "${POLICY_SERVER:?}"
out=$PWD/target/bench-apiserver
rm -rf "$out" && mkdir -p "$out/pki"
cargo build --release -p secrets-webhook --bins
bin=$PWD/target/release/secrets-webhook
kubewarden_wasm=$PWD/target/wasm-guest/wasm32-wasip1/release/secrets_policy_kubewarden.wasm
pids=()
# The API server's graceful shutdown can hang once etcd is gone: kill it outright after a moment, and
# wait, so that the next run can reuse the ports.
trap 'kill "${pids[@]}" 2>/dev/null; sleep 2; kill -9 "${pids[@]}" 2>/dev/null; wait' EXIT
etcd_port=23790 api_port=26443 ours_port=29443 kw_port=29445

# A CA for the API server's own certificates and its admin client (system:masters).
pki=$out/pki
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2> /dev/null
sign() { # <name> <subject> [extensions]
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2> /dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 1 ${3:+-extfile <(printf '%s' "$3")} -out "$pki/$1.crt" 2> /dev/null
}
sign apiserver /CN=kube-apiserver "subjectAltName=IP:127.0.0.1,DNS:localhost"
sign admin "/O=system:masters/CN=admin"
openssl genrsa -out "$pki/sa.key" 2048 2> /dev/null

"$TEST_ETCD" --data-dir "$out/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls http://127.0.0.1:23800 \
  > "$out/etcd.log" 2>&1 &
pids+=($!)
"$TEST_KUBE_APISERVER" --etcd-servers "http://127.0.0.1:$etcd_port" --secure-port "$api_port" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.key" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --authorization-mode RBAC \
  --disable-admission-plugins ServiceAccount > "$out/apiserver.log" 2>&1 &
pids+=($!)

api() { # <method> <path> [curl flags...]
  local method=$1 path=$2; shift 2
  curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    -X "$method" -H 'content-type: application/json' "https://127.0.0.1:$api_port$path" "$@"
}
for _ in $(seq 1 300); do [ "$(api GET /readyz 2> /dev/null)" = ok ] && break; sleep 0.2; done
[ "$(api GET /readyz)" = ok ] || { echo "kube-apiserver did not become ready" >&2; exit 1; }

# The pod: fixtures/bench/typical.json's (3 containers, 3 secrets, generateName), in <namespace>.
pod_in() {
  python3 -c 'import json,sys; pod=json.load(open("fixtures/bench/typical.json"))["request"]["object"]; pod["metadata"]["namespace"]=sys.argv[1]; print(json.dumps(pod))' "$1"
}

# Creates `count` pods in namespace <ns>, one after another over one connection; one time a line.
create_pods() { # <ns> <count> <times file>
  api POST /api/v1/namespaces -d "{\"metadata\":{\"name\":\"$1\"}}" > /dev/null
  pod_in "$1" > "$out/pod-$1.json"
  local config=$out/curl-$1.txt
  : > "$config"
  for i in $(seq 1 "$2"); do
    [ "$i" -gt 1 ] && echo next >> "$config"
    cat >> "$config" <<EOF
url = "https://127.0.0.1:$api_port/api/v1/namespaces/$1/pods"
request = "POST"
header = "content-type: application/json"
data-binary = "@$out/pod-$1.json"
cacert = "$pki/ca.crt"
cert = "$pki/admin.crt"
key = "$pki/admin.key"
output = "/dev/null"
write-out = "%{http_code} %{time_total}\n"
EOF
  done
  curl -s -K "$config" > "$3"
  local failed
  failed=$(awk '$1 != 201' "$3" | wc -l)
  [ "$failed" -eq 0 ] || { echo "$failed of $2 pods in $1 were not created" >&2; head -3 "$3" >&2; exit 1; }
}

register() { # <url>: the webhook configuration, for our label, trusting our local CA
  local bundle
  bundle=$(base64 -w0 < "$out/certs/ca.crt")
  api DELETE /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/bench > /dev/null 2>&1 || true
  api POST /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations -d @- > /dev/null <<EOF
{"apiVersion":"admissionregistration.k8s.io/v1","kind":"MutatingWebhookConfiguration",
 "metadata":{"name":"bench"},
 "webhooks":[{"name":"flyte-pod-webhook.flyte.org","admissionReviewVersions":["v1"],
   "clientConfig":{"url":"$1","caBundle":"$bundle"},
   "objectSelector":{"matchLabels":{"inject-flyte-secrets":"true"}},
   "rules":[{"apiGroups":[""],"apiVersions":["v1"],"operations":["CREATE"],"resources":["pods"]}],
   "failurePolicy":"Fail","sideEffects":"None","timeoutSeconds":5,"reinvocationPolicy":"IfNeeded"}]}
EOF
  sleep 2 # the API server picks the configuration up from its watch
}

# Percentiles of the seconds in column 2 of <file>, printed in milliseconds.
percentiles() {
  awk '{ print $2 * 1000 }' "$1" | sort -n |
    awk '{ v[NR] = $1 } END { printf "%.2f,%.2f,%.2f\n", v[int(NR*0.5)+1], v[int(NR*0.9)+1], v[int(NR*0.99)+1] }'
}

echo "webhook,pods,p50_ms,p90_ms,p99_ms" > "$out/summary.csv"
create_pods warmup-none 20 /dev/null
create_pods none "$pods" "$out/none.txt"
echo "none,$pods,$(percentiles "$out/none.txt")" >> "$out/summary.csv"

"$bin" --log-format json serve --local --cert-dir "$out/certs" --listen "127.0.0.1:$ours_port" \
  --policy-cache-dir "$out/cache" > "$out/ours.log" 2>&1 &
ours=$!; pids+=($ours)
for _ in $(seq 1 100); do curl -sf --cacert "$out/certs/ca.crt" "https://localhost:$ours_port/readyz" > /dev/null && break; sleep 0.2; done
register "https://localhost:$ours_port/mutate"
create_pods warmup-ours 20 /dev/null
before=$(grep -c '"secrets injected"' "$out/ours.log" || true)
create_pods ours "$pods" "$out/ours.txt"
echo "secrets-webhook,$pods,$(percentiles "$out/ours.txt")" >> "$out/summary.csv"
# Our server's own time for the measured reviews.
tail -n +"$((before + 1))" <(grep '"secrets injected"' "$out/ours.log") |
  sed -n 's/.*"micros":\([0-9]*\).*/x \1/p' > "$out/ours-micros.txt"
kill "$ours"; wait "$ours" 2>/dev/null || true

mkdir -p "$out/kubewarden"
cat > "$out/kubewarden/policies.yml" <<EOF
flyte-secrets:
  module: file://$kubewarden_wasm
  allowedToMutate: true
  settings: {}
EOF
KUBECONFIG=/nonexistent "$POLICY_SERVER" --ignore-kubernetes-connection-failure \
  --addr 127.0.0.1 --port "$kw_port" --readiness-probe-port "$((kw_port + 100))" \
  --cert-file "$out/certs/tls.crt" --key-file "$out/certs/tls.key" \
  --policies "$out/kubewarden/policies.yml" --policies-download-dir "$out/kubewarden" \
  > "$out/policy-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$((kw_port + 100))/readiness" > /dev/null && break; sleep 0.2; done
register "https://localhost:$kw_port/validate/flyte-secrets"
create_pods warmup-kubewarden 20 /dev/null
create_pods kubewarden "$pods" "$out/kubewarden.txt"
echo "policy-server,$pods,$(percentiles "$out/kubewarden.txt")" >> "$out/summary.csv"

column -s, -t < "$out/summary.csv"
echo
echo "secrets-webhook's own time per review (micros, headers in to response out):"
awk '{ print "x", $2 / 1e6 }' "$out/ours-micros.txt" > "$out/ours-seconds.txt"
echo "p50_ms,p90_ms,p99_ms"
percentiles "$out/ours-seconds.txt"
