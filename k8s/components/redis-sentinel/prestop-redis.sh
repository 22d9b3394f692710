#!/bin/sh
# preStop of redis-server: a master hands over before it stops, so a drain, a rollout or a pod
# deletion is a planned failover (the sentinels name a new master ~1.5 s later) instead of a
# crash that the sentinels notice only after down-after-milliseconds (5 s) + the election.
# A replica (or a demoted master not yet reconfigured) just stops. Bounded to 20 s of the pod's 30 s grace period; without an answer (no
# replica to promote, no sentinel), the pod stops as a crashed master would.
set -eu
# shellcheck source=k8s/components/redis-sentinel/lib.sh
. "$(dirname "$0")/lib.sh"

role=$(timeout 2 redis-cli -h "$POD_IP" -p "$REDIS_PORT" role 2>/dev/null | head -n 1 || true)
if [ "$role" != master ]; then
  exit 0
fi
# The sentinels' master, not merely a redis-server that says "master": a demoted master says so
# for several seconds until the sentinels reconfigure it, and must not fail over its successor.
m=$(current_master)
if [ "${m% *}" != "$SELF" ]; then
  exit 0
fi
# The other pods' sentinels: this pod's own stops at the same time.
i=0
while [ "$i" -lt "$REDIS_PODS" ]; do
  if [ "$i" != "$ORDINAL" ] && [ "$(sentinel_ask "$i" failover "$MASTER_NAME")" = OK ]; then
    tries=0
    while [ "$tries" -lt 100 ]; do
      m=$(current_master)
      if [ -n "$m" ] && [ "${m% *}" != "$SELF" ]; then
        echo "prestop-redis: $SELF handed over to ${m% *}"
        exit 0
      fi
      sleep 0.2
      tries=$((tries + 1))
    done
    echo "prestop-redis: no new master within 20 s" >&2
    exit 0
  fi
  i=$((i + 1))
done
echo "prestop-redis: no sentinel started a failover" >&2
