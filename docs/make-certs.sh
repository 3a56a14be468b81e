#!/usr/bin/env bash
# Makes what a berth deployment needs for mutual TLS and tokens (see docs/deploy.md):
#
#   docs/make-certs.sh OUT_DIR NODE[=ADDR[,ADDR...]]...
#
# In OUT_DIR:
#   ca.pem, ca.key          the deployment's CA (keep ca.key off the nodes and the hub)
#   hub/hub.pem, hub.key    the hub's client certificate (CN=hub), for berthspawner
#   hub/ca.pem              the CA, to check the nodes' certificates
#   hub/tokens/NODE         each node's bearer token, for berthspawner's `token_file`
#   NODE/node.pem, node.key the node's certificate: server (berthd's listener) and client
#                           (berthctl on the node through the listener), with the SANs below
#   NODE/ca.pem             the CA: berthd's `client_ca_file`
#   NODE/token              the node's bearer token: berthd's `security.token_file`
#
# SANs of a node: DNS:NODE, each ADDR (an IP address or a DNS name the hub uses to reach it),
# and DNS:localhost, IP:127.0.0.1, IP:::1 (berthctl on the node). An existing CA in OUT_DIR is
# reused, so nodes can be added later; an existing node or hub certificate is kept.
# Needs openssl. Keys are EC P-256, mode 0600.
set -euo pipefail

usage() {
  sed -n '2,4p' "$0" >&2
  exit 64
}
[ $# -ge 2 ] || usage
out=$1
shift
umask 077
mkdir -p "$out"
days_ca=3650
days_leaf=825

if [ ! -f "$out/ca.key" ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$out/ca.key" -out "$out/ca.pem" -days "$days_ca" -subj "/CN=berth CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made $out/ca.pem" >&2
fi

# issue NAME DIR STEM SAN EKU: DIR/STEM.key and DIR/STEM.pem signed by the CA.
issue() {
  local name=$1 dir=$2 stem=$3 san=$4 eku=$5 ext
  if [ -f "$dir/$stem.pem" ]; then
    echo "kept $dir/$stem.pem" >&2
    return
  fi
  mkdir -p "$dir"
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$eku"
    echo "subjectAltName=$san"
  } >"$ext"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$dir/$stem.key" -out "$dir/$stem.csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$dir/$stem.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
    -CAcreateserial -out "$dir/$stem.pem" -days "$days_leaf" -sha256 -extfile "$ext" 2>/dev/null
  rm -f "$dir/$stem.csr" "$ext"
  echo "made $dir/$stem.pem ($san)" >&2
}

issue hub "$out/hub" hub "DNS:hub" clientAuth
cp "$out/ca.pem" "$out/hub/ca.pem"
mkdir -p "$out/hub/tokens"

is_ip() {
  [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $1 == *:* ]]
}

for spec in "$@"; do
  node=${spec%%=*}
  addrs=""
  [[ $spec == *=* ]] && addrs=${spec#*=}
  if ! [[ $node =~ ^[A-Za-z0-9._-]{1,63}$ ]]; then
    echo "make-certs: node name $node: 1-63 characters of [A-Za-z0-9._-]" >&2
    exit 64
  fi
  san="DNS:$node,DNS:localhost,IP:127.0.0.1,IP:::1"
  IFS=, read -ra list <<<"$addrs"
  for a in "${list[@]}"; do
    [ -n "$a" ] || continue
    if is_ip "$a"; then entry="IP:$a"; else entry="DNS:$a"; fi
    [[ ",$san," == *",$entry,"* ]] || san="$san,$entry"
  done
  issue "$node" "$out/$node" node "$san" serverAuth,clientAuth
  cp "$out/ca.pem" "$out/$node/ca.pem"
  if [ ! -f "$out/$node/token" ]; then
    openssl rand -hex 32 >"$out/$node/token"
    cp "$out/$node/token" "$out/hub/tokens/$node"
    echo "made $out/$node/token" >&2
  fi
done
