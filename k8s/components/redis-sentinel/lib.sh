# shellcheck shell=sh
# Sourced by start-redis.sh and start-sentinel.sh (POSIX sh: the image's dash).
# Env (the StatefulSet): POD_NAME (<set>-<ordinal>), REDIS_SERVICE (the headless Service),
# REDIS_PODS (the StatefulSet's replicas), MASTER_NAME, REDIS_PORT, SENTINEL_PORT,
# SENTINEL_PASSWORD. A pod's name for its peers and clients is <pod>.<headless Service>: it
# resolves to the pod's current IP from any pod of the namespace (the search path), so it
# survives a restart on a new IP; publishNotReadyAddresses makes it resolve before readiness.
SET_NAME=${POD_NAME%-*}
ORDINAL=${POD_NAME##*-}

pod_host() {
  echo "$SET_NAME-$1.$REDIS_SERVICE"
}

# This pod's own name (used by the scripts that source this file).
# shellcheck disable=SC2034
SELF=$(pod_host "$ORDINAL")

# Prints "<host> <port>" of the master as the sentinels of the other pods know it, or nothing
# when none answers (the first start of the set, or every pod restarting at once). The address
# is GET-MASTER-ADDR-BY-NAME's, which names the promoted replica as soon as a failover has
# promoted it (SENTINEL MASTER names the old master until the failover ends). Several answers:
# the one with the highest config epoch wins, so a sentinel that has just restarted and not yet
# heard of the last failover cannot send this pod to a demoted master.
current_master() {
  best_epoch=-1
  best=""
  i=0
  while [ "$i" -lt "$REDIS_PODS" ]; do
    if [ "$i" != "$ORDINAL" ]; then
      addr=$(sentinel_ask "$i" get-master-addr-by-name "$MASTER_NAME" | paste -sd ' ' -)
      # Field/value lines: the config epoch.
      epoch=$(sentinel_ask "$i" master "$MASTER_NAME" | awk 'NR % 2 == 1 { k = $0; next }
        k == "config-epoch" { print $0 + 0 }')
      # An answer is "<host> <port>"; an error reply (NOAUTH, no such master) is not.
      case "$addr" in
        *" "[0-9]*) ;;
        *) addr="" ;;
      esac
      if [ -n "$addr" ] && [ -n "$epoch" ] && [ "$epoch" -gt "$best_epoch" ]; then
        best_epoch=$epoch
        best=$addr
      fi
    fi
    i=$((i + 1))
  done
  if [ -n "$best" ]; then
    echo "$best"
  fi
}

# `SENTINEL <args>` at pod $1's sentinel, one reply line per line; nothing if it does not
# answer (`timeout`: a peer whose name resolves to nothing reachable must not hold the start).
sentinel_ask() {
  pod=$1
  shift
  REDISCLI_AUTH="$SENTINEL_PASSWORD" timeout 3 redis-cli --raw -h "$(pod_host "$pod")" \
    -p "$SENTINEL_PORT" sentinel "$@" 2>/dev/null || true
}

# Without an answer, the first start's rule: pod 0 is the master.
master_or_first() {
  m=$(current_master)
  if [ -z "$m" ]; then
    m="$(pod_host 0) $REDIS_PORT"
  fi
  echo "$m"
}

# A value for a Redis config file: double-quoted, backslashes and quotes escaped.
conf_quote() {
  printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"
}
