#!/usr/bin/env bash
# Installs what the operator needs into a control plane started by cluster.sh: the CRDs from
# crds/, the RBAC from config/rbac/ and the local bindings from config/dev/, with the kubectl
# built beside the control plane. Harmless to run again.
#
#   install.sh DIR
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[[ $# -eq 1 ]] || {
	echo "usage: $0 DIR" >&2
	exit 2
}
dir="$(cd "$1" && pwd)"
kubectl=("$dir/bin/kubectl" --kubeconfig "$dir/kubeconfig-admin")

# config/rbac/ also holds a kustomization (the kustomize base), which is no object to apply.
# In order: ledger.yaml creates the Namespace the rest uses.
files=(-f "$root/crds/")
for file in "$root"/config/rbac/*.yaml; do
	[[ "$(basename "$file")" == kustomization.yaml ]] || files+=(-f "$file")
done
files+=(-f "$root/config/dev/")
"${kubectl[@]}" apply --server-side --field-manager=jit-operator-install "${files[@]}" >/dev/null
"${kubectl[@]}" wait --for=condition=Established --timeout=60s -f "$root/crds/" >/dev/null
echo "installed CRDs and RBAC into $(cat "$dir/endpoint")" >&2
