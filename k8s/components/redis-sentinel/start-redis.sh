#!/bin/sh
# redis-server of one pod. Pod 0 is the master of the set's first start; afterwards a pod
# starts as a replica of the master the other pods' sentinels know (pod 0 too, after a
# failover), so a restarted pod never comes back as a second master. Only when no sentinel
# answers (every pod restarting at once) does pod 0 start as master: docs/runbooks.md
# "Redis Sentinel (prod)" says what to check then.
# Env (besides lib.sh's): POD_IP, REDIS_PASSWORD, CONFIG_DIR (redis.conf), DATA_DIR (the PVC),
# RUN_DIR (an in-memory emptyDir: the running config, which Sentinel's CONFIG REWRITE updates).
set -eu
# shellcheck source=k8s/components/redis-sentinel/lib.sh
. "$(dirname "$0")/lib.sh"

master=$(master_or_first)
host=${master% *}
port=${master#* }

conf="$RUN_DIR/redis.conf"
{
  cat "$CONFIG_DIR/redis.conf"
  echo "bind $POD_IP"
  echo "port $REDIS_PORT"
  echo "dir $DATA_DIR"
  # Replicas are reported to the sentinels by name, not by an IP a restart changes.
  echo "replica-announce-ip $SELF"
  echo "replica-announce-port $REDIS_PORT"
  # The same password for clients and for replication: any pod may become the master.
  echo "requirepass $(conf_quote "$REDIS_PASSWORD")"
  echo "masterauth $(conf_quote "$REDIS_PASSWORD")"
  if [ "$host" != "$SELF" ]; then
    echo "replicaof $host $port"
  fi
} >"$conf"

if [ "$host" = "$SELF" ]; then
  echo "start-redis: $SELF starts as the master"
else
  echo "start-redis: $SELF starts as a replica of $host:$port"
fi
exec redis-server "$conf"
