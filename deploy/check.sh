#!/usr/bin/env bash
# Checks the deployment files with real validators: promtool (rules, their unit tests, the scrape
# configs, the Grafana queries' PromQL), kubernetes-validate (the manifests against the
# Kubernetes schemas, strict), systemd-analyze (the unit) and `outbox-relay config check` (the
# TOML of deploy/relay.toml and of the ConfigMap). A missing tool is skipped with a message; any
# check that runs and fails makes the script fail. Not part of `cargo test`; tests/it/deploy.rs
# checks the metric names against a live relay.
#
#   bash deploy/check.sh
#   apt-get install -y prometheus    # promtool
#   pip install kubernetes-validate  # carries the schemas, works offline
set -uo pipefail
cd "$(dirname "$0")/.."

failed=0
skipped=0
log() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || { echo "FAILED: $*"; failed=1; return 1; }; }
skip() { echo "SKIPPED: $*"; skipped=1; }
have() { command -v "$1" >/dev/null 2>&1; }

work=$(mktemp -d /tmp/outbox-relay-deploy-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

log "Prometheus rules and scrape configs (promtool)"
if have promtool; then
    run promtool check rules deploy/prometheus/alerts.yml
    (cd deploy/prometheus && run promtool test rules alerts_test.yml) || failed=1
    run promtool check config deploy/prometheus/prometheus.yml
    if promtool check config deploy/prometheus/prometheus-kubernetes.yml >"$work/k8s.out" 2>&1; then
        cat "$work/k8s.out"
    elif grep -q 'field kubernetes_sd_configs not found' "$work/k8s.out"; then
        # Debian's promtool is built without Kubernetes discovery: check the rest of the file
        # (relabelling, rule files) with a static target in its place.
        echo "this promtool has no kubernetes_sd_configs: checking prometheus-kubernetes.yml with static_configs in its place"
        sed 's/^    kubernetes_sd_configs:$/    static_configs:/; s/^      - role: pod$/      - targets: ["relay:9187"]/' \
            deploy/prometheus/prometheus-kubernetes.yml >"$work/prometheus-kubernetes.yml"
        cp deploy/prometheus/alerts.yml "$work/alerts.yml"
        run promtool check config "$work/prometheus-kubernetes.yml"
    else
        cat "$work/k8s.out"
        echo "FAILED: promtool check config deploy/prometheus/prometheus-kubernetes.yml"
        failed=1
    fi
    # The dashboard's queries as recording rules, so that promtool parses their PromQL (Grafana's
    # variables replaced by values).
    if have python3; then
        python3 - deploy/grafana/outbox-relay.json >"$work/dashboard-rules.yml" <<'EOF'
import json, sys
dashboard = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
print("groups:\n  - name: dashboard\n    rules:")
for i, expr in enumerate(exprs):
    expr = expr.replace("$__rate_interval", "1m").replace("$job", "outbox-relay").replace("$group", ".*")
    print(f"      - record: dashboard:query{i}\n        expr: {json.dumps(expr)}")
EOF
        printf '$ promtool check rules <the %s queries of deploy/grafana/outbox-relay.json>\n' \
            "$(grep -c 'expr:' "$work/dashboard-rules.yml")"
        promtool check rules "$work/dashboard-rules.yml" || { echo "FAILED: dashboard queries"; failed=1; }
    else
        skip "python3 not found: the dashboard's queries are not parsed"
    fi
else
    skip "promtool not found (apt-get install -y prometheus)"
fi

log "Kubernetes manifests (kubernetes-validate)"
if have kubernetes-validate; then
    run kubernetes-validate --strict deploy/kubernetes/*.yaml
else
    skip "kubernetes-validate not found (pip install kubernetes-validate)"
fi

binary=""
for candidate in target/release/outbox-relay target/debug/outbox-relay "$(command -v outbox-relay)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then binary=$candidate; break; fi
done

log "systemd unit (systemd-analyze verify)"
if have systemd-analyze && [ -n "$binary" ]; then
    # The unit names the installed path; verify it against the binary built here.
    sed "s|/usr/local/bin/outbox-relay|$(realpath "$binary")|" deploy/systemd/outbox-relay.service \
        >"$work/outbox-relay.service"
    run systemd-analyze verify "$work/outbox-relay.service"
else
    skip "systemd-analyze or an outbox-relay binary not found"
fi

log "relay configurations (outbox-relay config check)"
if [ -n "$binary" ] && have python3; then
    python3 -c '
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"^  relay\.toml: \|\n((?:    .*\n|\n)+)", text, re.M).group(1)
sys.stdout.write("".join(line[4:] for line in block.splitlines(True)))
' deploy/kubernetes/configmap.yaml >"$work/configmap-relay.toml"
    for config in deploy/relay.toml "$work/configmap-relay.toml"; do
        printf '$ %s --config %s config check\n' "$binary" "$config"
        OUTBOX_DATABASE_URL=postgres://check@127.0.0.1/check OUTBOX_REDIS_URL=redis://127.0.0.1 \
            "$binary" --config "$config" config check >"$work/config.out" 2>&1 &&
            head -1 "$work/config.out" || { cat "$work/config.out"; echo "FAILED: config check $config"; failed=1; }
    done
else
    skip "an outbox-relay binary (cargo build) or python3 not found"
fi

log "result"
if ((failed)); then
    echo "deploy/check.sh: FAILED"
    exit 1
fi
((skipped)) && echo "deploy/check.sh: passed, with checks skipped (above)" || echo "deploy/check.sh: all checks passed"
