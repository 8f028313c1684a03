#!/usr/bin/env bash
# Validates the Kubernetes manifests (deploy/k8s, or the folder given) against
# the Kubernetes API schemas with kubernetes-validate (PyPI), installed into the
# project's venv .sluice/venv when missing, and checks that kustomization.yaml
# lists exactly the manifests of the folder. Exits non-zero on any failure.
#
#   bash scripts/validate_k8s.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-deploy/k8s}"
VERSION="1.34.1"       # kubernetes-validate, which carries the schemas of...
K8S="1.34.0"           # ...this Kubernetes version
VENV=".sluice/venv"
say() { printf '[validate_k8s] %s\n' "$*"; }

[[ -d "$DIR" ]] || { echo "no folder $DIR" >&2; exit 1; }
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
installed="$("$VENV/bin/python" -m pip show kubernetes-validate 2>/dev/null || true)"
if ! grep -qx "Version: $VERSION" <<<"$installed"; then
    say "installing kubernetes-validate==$VERSION into $VENV"
    "$VENV/bin/python" -m pip install -q "kubernetes-validate==$VERSION"
fi

shopt -s nullglob
manifests=()
for f in "$DIR"/*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml ]] || manifests+=("$f")
done
(( ${#manifests[@]} > 0 )) || { echo "no manifests in $DIR" >&2; exit 1; }

failed=0
for f in "${manifests[@]}"; do
    if out="$("$VENV/bin/kubernetes-validate" --strict -k "$K8S" "$f" 2>&1)"; then
        say "ok    $f"
    else
        say "FAIL  $f"
        printf '%s\n' "$out" >&2
        failed=1
    fi
done

# kustomization.yaml: every manifest listed, every listed file present.
KUST="$DIR/kustomization.yaml"
if [[ ! -f "$KUST" ]]; then
    say "FAIL  $KUST is missing"
    failed=1
else
    listed="$("$VENV/bin/python" - "$KUST" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1])) or {}
for r in doc.get("resources") or []:
    print(r)
PY
)"
    for f in "${manifests[@]}"; do
        if ! grep -qx "$(basename "$f")" <<<"$listed"; then
            say "FAIL  $(basename "$f") is not listed in $KUST"
            failed=1
        fi
    done
    while IFS= read -r r; do
        [[ -z "$r" || -f "$DIR/$r" ]] || { say "FAIL  $KUST lists $r, which does not exist"; failed=1; }
    done <<<"$listed"
    [[ "$failed" == 1 ]] || say "ok    $KUST lists all ${#manifests[@]} manifests"
fi
exit "$failed"
