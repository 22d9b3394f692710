#!/bin/sh
# Readiness of the sentinel: it answers (REDISCLI_AUTH: the sentinels' password) and knows every
# other pod's redis-server and sentinel (a restarted sentinel learns the replicas from the
# master every 10 s and the sentinels every 2 s). A rolling update waits for it before the
# next pod, whose preStop may ask this sentinel to fail over. Known peers stay counted while
# they are down, so an outage does not make the others unready.
want=$((REDIS_PODS - 1))
timeout 2 redis-cli --raw -h "$POD_IP" -p "$SENTINEL_PORT" sentinel master "$MASTER_NAME" |
  awk -v want="$want" 'NR % 2 == 1 { k = $0; next }
    k == "num-slaves" { s = $0 } k == "num-other-sentinels" { o = $0 }
    END { exit !(s == want && o == want) }'
