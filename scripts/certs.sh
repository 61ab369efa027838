#!/usr/bin/env bash
# Development TLS certificates for a Flower SuperLink (not for production use).
#
#   scripts/certs.sh [DIR] [HOST ...]      (make certs CERT_DIR=certs CERT_HOST="server.lan 10.0.0.5")
#
# Writes DIR/ca.crt + ca.key (a development certificate authority, kept if it
# already exists so certificates handed out earlier stay valid) and
# DIR/server.crt + server.key, issued for localhost, 127.0.0.1, ::1 and every
# HOST given (a host name or an IP address: whatever SuperNodes and `flwr run`
# use to reach the SuperLink). The SuperLink uses ca.crt, server.crt and
# server.key; SuperNodes and the `flwr` CLI need only ca.crt.
set -euo pipefail

dir="${1:-certs}"
shift || true
command -v openssl >/dev/null || { echo "certs.sh: openssl is not installed" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for host in "$@"; do
  [ -n "$host" ] || continue
  if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
    san="$san,IP:$host"
  else
    san="$san,DNS:$host"
  fi
done

if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 3650 -nodes \
    -keyout ca.key -out ca.crt -subj "/CN=fedkd development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
fi

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -nodes -keyout server.key -out server.csr \
  -subj "/CN=fedkd SuperLink" 2>/dev/null
cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=$san
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out server.crt -days 825 -sha256 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
echo "certs.sh: $(pwd)/server.crt for $san (CA: $(pwd)/ca.crt)"
