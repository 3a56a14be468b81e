#!/usr/bin/env bash
# Makes what a berth deployment needs for mutual TLS and tokens (see docs/deploy.md):
#
#   docs/make-certs.sh OUT_DIR NODE[=ADDR[,ADDR...]]... [operator:NAME]...
#
# Two CAs, so that a node's certificate can never be a client of another node: the server CA
# signs the nodes (serverAuth only), the client CA signs the hub and the operators (clientAuth
# only), and a node trusts only the client CA for its clients.
#
# In OUT_DIR:
#   ca.pem, ca.key               the server CA: signs the nodes (keep ca.key off nodes and hub)
#   client-ca.pem, client-ca.key the client CA: signs the hub and operators (keep the key offline)
#   hub/hub.pem, hub.key         the hub's client certificate (CN=hub, SAN DNS:hub)
#   hub/ca.pem                   the server CA, to check the nodes' certificates
#   hub/tokens/NODE              each node's bearer token, for berthspawner's `token_file`
#   hub/activity-token           the token of the hub service berthd's activity reports use
#                                (JupyterHub's services, role with users:activity; deploy.md)
#   NODE/node.pem, node.key      the node's server certificate, with the SANs below
#   NODE/client-ca.pem           the client CA: berthd's `client_ca_file`
#   NODE/token                   the node's bearer token: berthd's `security.token_file`
#   NODE/activity-token          a copy of hub/activity-token: berthd's `activity.token_file`
#   operators/NAME/operator.pem, operator.key
#                                an operator's client certificate (SAN DNS:NAME.operator), for
#                                berthctl off the node (--cert, --key)
#   operators/NAME/ca.pem        the server CA, for berthctl's --ca
#
# SANs of a node: DNS:NODE, each ADDR (an IP address or a DNS name the hub uses to reach it),
# and DNS:localhost, IP:127.0.0.1, IP:::1. Existing CAs in OUT_DIR are reused, so nodes and
# operators can be added later; an existing certificate is kept if its CA signed it for its
# purpose, else (e.g. a directory made by the one-CA version of this script) made again.
# Needs openssl. Keys are EC P-256; keys and tokens are mode 0600.
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

# make_ca STEM CN: OUT_DIR/STEM.pem and STEM.key, unless they exist.
make_ca() {
  local stem=$1 cn=$2
  [ -f "$out/$stem.key" ] && return
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$out/$stem.key" -out "$out/$stem.pem" -days "$days_ca" -subj "/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made $out/$stem.pem" >&2
}
make_ca ca "berth server CA"
make_ca client-ca "berth client CA"

# issue CA NAME DIR STEM SAN EKU: DIR/STEM.key and DIR/STEM.pem signed by OUT_DIR/CA.pem.
issue() {
  local ca=$1 name=$2 dir=$3 stem=$4 san=$5 eku=$6 ext purpose
  case $eku in
    serverAuth) purpose=sslserver ;;
    clientAuth) purpose=sslclient ;;
  esac
  if [ -f "$dir/$stem.pem" ]; then
    if openssl verify -CAfile "$out/$ca.pem" -purpose "$purpose" "$dir/$stem.pem" >/dev/null 2>&1 &&
      ! openssl x509 -in "$dir/$stem.pem" -noout -ext extendedKeyUsage | grep -q ','; then
      echo "kept $dir/$stem.pem" >&2
      return
    fi
    echo "$dir/$stem.pem is not a $eku certificate of $out/$ca.pem alone: making it again" >&2
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
  openssl x509 -req -in "$dir/$stem.csr" -CA "$out/$ca.pem" -CAkey "$out/$ca.key" \
    -CAcreateserial -out "$dir/$stem.pem" -days "$days_leaf" -sha256 -extfile "$ext" 2>/dev/null
  rm -f "$dir/$stem.csr" "$ext"
  echo "made $dir/$stem.pem ($san)" >&2
}

issue client-ca hub "$out/hub" hub "DNS:hub" clientAuth
cp "$out/ca.pem" "$out/hub/ca.pem"
mkdir -p "$out/hub/tokens"
if [ ! -f "$out/hub/activity-token" ]; then
  openssl rand -hex 32 >"$out/hub/activity-token"
  echo "made $out/hub/activity-token" >&2
fi

is_ip() {
  [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $1 == *:* ]]
}

for spec in "$@"; do
  if [[ $spec == operator:* ]]; then
    name=${spec#operator:}
    if ! [[ $name =~ ^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$ ]]; then
      echo "make-certs: operator name $name: 1-52 characters of [a-z0-9-]" >&2
      exit 64
    fi
    issue client-ca "$name" "$out/operators/$name" operator "DNS:$name.operator" clientAuth
    cp "$out/ca.pem" "$out/operators/$name/ca.pem"
    continue
  fi
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
  issue ca "$node" "$out/$node" node "$san" serverAuth
  cp "$out/client-ca.pem" "$out/$node/client-ca.pem"
  # The one-CA layout's client CA: gone, so no configuration keeps trusting the server CA.
  rm -f "$out/$node/ca.pem"
  if [ ! -f "$out/$node/token" ]; then
    openssl rand -hex 32 >"$out/$node/token"
    cp "$out/$node/token" "$out/hub/tokens/$node"
    echo "made $out/$node/token" >&2
  fi
  cp "$out/hub/activity-token" "$out/$node/activity-token"
done
