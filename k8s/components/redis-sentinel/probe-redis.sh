#!/bin/sh
# Readiness of redis-server: a master, or a replica whose link to the master is up (a replica
# still loading or syncing is not a copy yet, and the PodDisruptionBudget counts only ready
# pods: no drain takes a second pod while one is resyncing). REDISCLI_AUTH holds the password;
# an error reply (NOAUTH, LOADING) matches neither line.
info=$(timeout 2 redis-cli -h "$POD_IP" -p "$REDIS_PORT" info replication) || exit 1
case "$info" in
  *role:master*) exit 0 ;;
  *master_link_status:up*) exit 0 ;;
esac
exit 1
