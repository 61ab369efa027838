#!/usr/bin/env bash
# SuperNode authentication keys (ECDSA P-384, OpenSSH format, as Flower 1.41 expects).
#
#   scripts/supernode_keys.sh [DIR] [N]      (make keys KEY_DIR=keys NODES=3)
#
# Writes DIR/node_<i> (private key: stays on SuperNode i, passed to
# `flower-supernode --auth-supernode-private-key`) and DIR/node_<i>.pub (public
# key: registered on the SuperLink with `flwr supernode register`), i = 0..N-1.
# Existing keys are kept.
set -euo pipefail

dir="${1:-keys}"
n="${2:-2}"
command -v ssh-keygen >/dev/null || { echo "supernode_keys.sh: ssh-keygen is not installed" >&2; exit 1; }
mkdir -p "$dir"
for ((i = 0; i < n; i++)); do
  key="$dir/node_$i"
  [ -s "$key" ] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedkd supernode $i" -f "$key"
done
echo "supernode_keys.sh: $n key pairs in $(cd "$dir" && pwd)"
