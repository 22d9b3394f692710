#!/bin/sh
# redis-sentinel of one pod. Its config is written afresh at each start (Sentinel rewrites it
# as it learns, so it lives in the in-memory RUN_DIR) and monitors the master the other pods'
# sentinels know, else pod 0; it learns the replicas from the master and the other sentinels
# from their hello messages. The sentinel id is derived from the pod name, so a restarted
# sentinel is the same peer to the others, not one more.
# Env (besides lib.sh's): POD_IP, REDIS_PASSWORD (auth-pass), RUN_DIR.
set -eu
# shellcheck source=k8s/components/redis-sentinel/lib.sh
. "$(dirname "$0")/lib.sh"

master=$(master_or_first)
host=${master% *}
port=${master#* }

# With resolve-hostnames, Sentinel exits on a monitor address that does not resolve: wait
# for the master's name (a pod being created has none yet), at most a minute, then let the
# kubelet restart this container.
tries=0
until getent hosts "$host" >/dev/null; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "start-sentinel: $host does not resolve" >&2
    exit 1
  fi
  sleep 1
done

# A replica's sentinel starts once its redis-server is in sync (at most 30 s): a sentinel reads
# the master's replica list when it connects, then every 10 s only, and one that leads a
# failover without knowing this pod's replica would leave it following the old master.
if [ "$host" != "$SELF" ]; then
  tries=0
  until REDISCLI_AUTH="$REDIS_PASSWORD" timeout 2 redis-cli -h "$POD_IP" -p "$REDIS_PORT" info replication 2>/dev/null |
    grep -q '^master_link_status:up'; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
      echo "start-sentinel: $SELF not in sync after 30 s; starting anyway"
      break
    fi
    sleep 1
  done
fi

conf="$RUN_DIR/sentinel.conf"
cat >"$conf" <<CONF
bind $POD_IP
port $SENTINEL_PORT
dir $RUN_DIR
sentinel myid $(printf '%s' "$POD_NAME" | sha1sum | cut -c1-40)
# Pods are known by name: an IP changes when a pod restarts.
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF
sentinel announce-port $SENTINEL_PORT
# Clients and the other sentinels authenticate here with the sentinels' own password.
requirepass $(conf_quote "$SENTINEL_PASSWORD")
sentinel sentinel-pass $(conf_quote "$SENTINEL_PASSWORD")
# Quorum 2 of 3: one pod down (a drain, a node lost) still elects a leader and fails over.
sentinel monitor $MASTER_NAME $host $port 2
sentinel auth-pass $MASTER_NAME $(conf_quote "$REDIS_PASSWORD")
# 5 s without a valid answer from the master before it is subjectively down: a crashed
# master's write gap is ~5 s + the election (~1 s), and a pause shorter than that (a
# fork for the AOF rewrite, a brief network blip, a slow fsync) triggers no failover, which
# would cost more than the pause.
sentinel down-after-milliseconds $MASTER_NAME 5000
# 30 s, not the default 3 min: a failover that fails (the chosen replica unreachable) is
# retried after 2 x 30 s instead of 6 min. A 128 MB dataset resyncs well within it.
sentinel failover-timeout $MASTER_NAME 30000
# One replica at a time resyncs with a new master; the other keeps its copy meanwhile.
sentinel parallel-syncs $MASTER_NAME 1
CONF

echo "start-sentinel: $SELF monitors $MASTER_NAME at $host:$port"
exec redis-server "$conf" --sentinel
