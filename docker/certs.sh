#!/usr/bin/env bash
# Demo certificates for a TLS SuperLink with SuperNode authentication. Real deployments bring their own CA.
#
#   docker/certs.sh [-o OUTDIR] [-n NODES] [-s SAN]... [-f]
#
#   -o OUTDIR  where to write (default: docker/certs, git-ignored)
#   -n NODES   SuperNode key pairs to create (default: 3)
#   -s SAN     extra subjectAltName for the SuperLink certificate, e.g. -s DNS:link.example.org -s IP:10.0.0.5
#              (always included: DNS:localhost, IP:127.0.0.1, DNS:superlink = the compose service name)
#   -f         overwrite existing files (default: keep them, create only what is missing)
#
# Writes:
#   ca.key, ca.crt                 demo CA (ca.crt is what SuperNodes and the flwr CLI trust)
#   server.key, server.pem         SuperLink TLS key and certificate, signed by the CA
#   supernode-<i>, supernode-<i>.pub
#                                  SuperNode i's ECDSA P-384 key pair in OpenSSH format: the private key goes to
#                                  `flower-supernode --auth-supernode-private-key`, the public key to
#                                  `flwr supernode register <file> <profile>` (Flower 1.41 accepts only these formats)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="$here/certs"
nodes=3
force=0
extra_sans=()
while getopts "o:n:s:fh" opt; do
  case "$opt" in
    o) out="$OPTARG" ;;
    n) nodes="$OPTARG" ;;
    s) extra_sans+=("$OPTARG") ;;
    f) force=1 ;;
    h) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [-o OUTDIR] [-n NODES] [-s SAN]... [-f]" >&2; exit 2 ;;
  esac
done
[[ "$nodes" =~ ^[0-9]+$ ]] || { echo "-n needs a number, got '$nodes'" >&2; exit 2; }
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }

mkdir -p "$out"
cd "$out"
umask 077  # private keys readable by their owner only (docker: see docker/README.md for the container user)

need() { [[ "$force" == 1 || ! -s "$1" ]]; }

days=825
if need ca.key || need ca.crt; then
  openssl genrsa -out ca.key 3072 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=amole demo CA" -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"
  echo "created CA: $out/ca.crt"
  force=1  # a new CA invalidates the server certificate
fi

if need server.key || need server.pem; then
  sans="DNS:localhost,IP:127.0.0.1,DNS:superlink"
  for san in "${extra_sans[@]+"${extra_sans[@]}"}"; do sans="$sans,$san"; done
  openssl genrsa -out server.key 2048 2>/dev/null
  openssl req -new -key server.key -subj "/CN=superlink" -out server.csr
  cat > server.ext <<EOF
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = $sans
EOF
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
    -extfile server.ext -out server.pem 2>/dev/null
  rm -f server.csr server.ext ca.srl
  openssl verify -CAfile ca.crt server.pem >/dev/null
  echo "created SuperLink certificate: $out/server.pem ($sans)"
fi

# SuperNode keys: Flower loads them with cryptography's load_ssh_private_key / load_ssh_public_key and wants an
# EC key on a NIST curve, so OpenSSH format (not PEM). ssh-keygen writes it; without ssh-keygen, Python's
# `cryptography` (a Flower dependency) does.
python_bin="${PYTHON:-python3}"
for ((i = 1; i <= nodes; i++)); do
  key="supernode-$i"
  need "$key" || need "$key.pub" || continue
  rm -f "$key" "$key.pub"
  if command -v ssh-keygen >/dev/null; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "" -f "$key"
  else
    "$python_bin" - "$key" <<'EOF'
import sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec

key = ec.generate_private_key(ec.SECP384R1())
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
with open(path + ".pub", "wb") as f:
    f.write(key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH) + b"\n")
EOF
  fi
  chmod 644 "$key.pub"
  echo "created SuperNode key pair: $out/$key(.pub)"
done
chmod 644 ca.crt server.pem
