#!/usr/bin/env bash
# Certificate rotation for humans: the CI test (e2e/tests/cluster/certs_cluster.rs) for longer.
# Two `serve` replicas against a real kube-apiserver + etcd, a 4-minute CA and a 90-second serving
# certificate, pods created through the API server all along. CI runs 200 s; this defaults to 30
# minutes (about 40 serving renewals and 15 CAs).
#
#   host/benches/rotation.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-1800}"
eval "$(../shared/tools/unpack target/tools)"
ROTATION_SECONDS="$seconds" cargo test -p secrets-webhook-e2e --test cluster \
  -- certs_cluster::two_replicas_renew_certificates_while_pods_are_created --nocapture --test-threads 1
