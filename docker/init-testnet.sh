#!/bin/sh
# The testnet's one-shot init step (compose service "init"; docs/testnet.md).
#
# Runs as root in a container that mounts every peer's volume at /peers/peer-NN and the shared
# genesis volume at /genesis. On the first run it gives each peer a fresh identity and a config
# (walrus-peer init), writes the genesis for this testnet (walrus-peer genesis create) and hands
# the files to the unprivileged user the peers run as. Later runs find the genesis and do
# nothing, so `docker-compose up` after `stop` keeps keys, genesis and stored slivers.
#
# Environment: WALRUS_NET_PREFIX (first three octets of the /24 subnet; peer NN listens on
# PREFIX.(10+NN)), WALRUS_PEERS (20), WALRUS_SHARDS (100), WALRUS_EPOCH_DURATION (seconds).
set -eu

prefix="${WALRUS_NET_PREFIX:?set WALRUS_NET_PREFIX, e.g. 172.29.0}"
peers="${WALRUS_PEERS:-20}"
shards="${WALRUS_SHARDS:-100}"
epoch_duration="${WALRUS_EPOCH_DURATION:-86400}"
genesis=/genesis/genesis.toml
port=4001

if [ -f "$genesis" ]; then
    echo "init: $genesis exists; keeping this testnet's keys and genesis"
    exit 0
fi

members=""
bootstrap=""
index=1
while [ "$index" -le "$peers" ]; do
    name=$(printf 'peer-%02d' "$index")
    dir="/peers/$name"
    address="/ip4/$prefix.$((10 + index))/tcp/$port"
    [ -d "$dir" ] || { echo "init: $dir is not mounted" >&2; exit 2; }
    # --force: a half-finished earlier init left a config; the key, if any, is kept.
    peer_id=$(walrus-peer init --data-dir "$dir" --genesis "$genesis" --listen "$address" \
        --metrics 127.0.0.1:9184 --capacity $((20 * 1024 * 1024 * 1024)) \
        --no-genesis-check --force --json |
        sed -n 's/.*"peerId": *"\([^"]*\)".*/\1/p')
    [ -n "$peer_id" ] || { echo "init: walrus-peer init gave no peer id for $name" >&2; exit 1; }
    echo "init: $name $peer_id $address"
    members="$members --member $dir"
    # peer-01 is the testnet's bootstrap peer: the entry point named in the genesis.
    [ "$index" -eq 1 ] && bootstrap="$address/p2p/$peer_id"
    index=$((index + 1))
done

# shellcheck disable=SC2086 # $members is a list of options on purpose
walrus-peer genesis create --network testnet --shards "$shards" \
    --epoch-duration "$epoch_duration" --bootstrap "$bootstrap" $members \
    -o "$genesis.tmp" --force
chmod 0644 "$genesis.tmp"
chown -R 10001:10001 /peers /genesis /client 2>/dev/null || chown -R 10001:10001 /peers /genesis
mv "$genesis.tmp" "$genesis"
walrus-peer info --genesis "$genesis" >/tmp/info.txt && head -n 2 /tmp/info.txt
