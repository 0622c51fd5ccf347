# shellcheck shell=bash
# scripts/stack-multiregion.sh — the `multiregion` part of scripts/stack (see its header for
# the commands and the FRAISEQL_MIRROR_REGIONS / *_HEAP / MM2_REST_PORT settings).
# Sourced by scripts/stack, not run on its own: it uses that script's settings (STACK,
# RUN_DIR, LOG_DIR, JAVA, START_TIMEOUT, ...), its kafka_* functions and lib.sh's helpers, and
# defines settings and functions only.
#
# `up multiregion`: one single-node KRaft cluster per region (FRAISEQL_MIRROR_REGIONS) and one
# MirrorMaker 2 process that mirrors each region's query events into the central cluster, i.e.
# scripts/stack's Kafka. The regional brokers reuse the kafka_* functions: those read the KAFKA_*
# globals, and with_region shadows them with locals (bash scoping is dynamic), so a region gets
# its own config, data, pid and log files and the same start/readiness/stop logic.

# ---------------------------------------------------------------- settings --
# Its own copy of the jars: the pom is shared, and fetching into the central broker's libs
# would swap jars under a running broker.
MR_DIR=$STACK/regions
MR_LIBS=$MR_DIR/libs
MR_REGIONS=${FRAISEQL_MIRROR_REGIONS:-us-east=127.0.0.1:19092,eu-west=127.0.0.1:29092}
MR_HEAP=${FRAISEQL_REGION_KAFKA_HEAP:-256m}
MM2_HEAP=${FRAISEQL_MM2_HEAP:-384m}
MM2_REST_PORT=${FRAISEQL_MM2_REST_PORT:-19083}
MM2_CONF=$MR_DIR/mm2.properties
MM2_LOG4J=$MR_DIR/mm2-log4j.properties
MM2_PIDFILE=$RUN_DIR/mm2.pid
MM2_LOG=$LOG_DIR/mm2.log
MM2_OUT=$LOG_DIR/mm2.out
MR_ALIASES=() MR_ADDRS=() # filled by mr_init

# --------------------------------------------------------------- regions --

mr_init() { # parse FRAISEQL_MIRROR_REGIONS into MR_ALIASES / MR_ADDRS, once
    ((${#MR_ALIASES[@]} == 0)) || return 0
    local item alias addr
    local -a items
    local -A seen=()
    IFS=',' read -ra items <<<"${MR_REGIONS// /}"
    for item in "${items[@]}"; do
        alias=${item%%=*} addr=${item#*=}
        # An alias becomes a topic-name prefix (`<alias>.fraiseql.query-events`): no dots.
        if [[ $item != *=* || ! $alias =~ ^[a-z0-9][a-z0-9-]*$ || $alias == central ||
            ! $addr =~ ^[^:]+:[0-9]+$ || -n ${seen[$alias]:-} ]]; then
            die "FRAISEQL_MIRROR_REGIONS: '$item' is not ALIAS=HOST:PORT with a unique alias of lower-case letters, digits and '-' (not 'central')"
        fi
        seen[$alias]=1
        MR_ALIASES+=("$alias") MR_ADDRS+=("$addr")
    done
    ((${#MR_ALIASES[@]})) || die "FRAISEQL_MIRROR_REGIONS names no region"
}

# with_region ALIAS HOST:PORT COMMAND... — run COMMAND (a kafka_* or region_* function) for
# one regional broker.
with_region() {
    local alias=$1 addr=$2
    shift 2
    # shellcheck disable=SC2034 # read by the kafka_* functions called below
    local LOG_PREFIX="stack[$alias]" \
        KAFKA_HOST=${addr%:*} KAFKA_PORT=${addr##*:} KAFKA_HEAP=$MR_HEAP \
        KAFKA_DIR=$MR_DIR/$alias KAFKA_LIBS=$MR_LIBS \
        KAFKA_DATA=$MR_DIR/$alias/data \
        KAFKA_CONF=$MR_DIR/$alias/server.properties \
        KAFKA_LOG4J=$MR_DIR/$alias/log4j.properties \
        KAFKA_TOOLS_LOG4J=$MR_DIR/$alias/tools-log4j.properties \
        KAFKA_TOOLS_CLIENT=$MR_DIR/$alias/tools-client.properties \
        KAFKA_PIDFILE=$RUN_DIR/kafka-$alias.pid \
        KAFKA_ADDRFILE=$RUN_DIR/kafka-$alias.addr \
        KAFKA_LOG=$LOG_DIR/kafka-$alias.log \
        KAFKA_OUT=$LOG_DIR/kafka-$alias.out
    # shellcheck disable=SC2034
    local KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
    "$@"
}

for_regions() { # for_regions COMMAND... — with_region for each region, one after the other
    local i
    for i in "${!MR_ALIASES[@]}"; do
        with_region "${MR_ALIASES[i]}" "${MR_ADDRS[i]}" "$@"
    done
}

# Same, in parallel (JVM start-up and shutdown dominate); fails if any of them failed.
for_regions_parallel() {
    local i pids=() failed=0 pid
    for i in "${!MR_ALIASES[@]}"; do
        with_region "${MR_ALIASES[i]}" "${MR_ADDRS[i]}" "$@" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    return "$failed"
}

region_launch() { # (inside with_region)
    kafka_pid >/dev/null && return 0
    local port
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$KAFKA_HOST" "$port"; then
            die "$KAFKA_HOST:$port is already in use by a process this script did not start.
  Stop it, or choose other addresses, e.g. FRAISEQL_MIRROR_REGIONS=us-east=127.0.0.1:19192,eu-west=127.0.0.1:29192 (controller uses port+1)"
        fi
    done
    mkdir -p "$KAFKA_DIR"
    kafka_launch
}

# Ready = the broker answers and has the events topic (what the API processes of the region
# write to, and what MirrorMaker 2 mirrors). Created here rather than by the first producer so
# that MirrorMaker's own readiness (the mirrored topic on central) can be checked at `up`.
region_ready() { # (inside with_region)
    kafka_wait
    if ! kafka_class org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$KAFKA_HOST:$KAFKA_PORT" --command-config "$KAFKA_TOOLS_CLIENT" \
        --create --if-not-exists --topic fraiseql.query-events \
        --partitions 6 --replication-factor 1 >>"$SETUP_LOG" 2>&1; then
        kafka_fail "could not create fraiseql.query-events"
    fi
}

region_status() { # (inside with_region) one status line; fails if the broker is not running
    local pid
    if pid=$(kafka_pid); then
        printf '%-10s running  pid %-8s %s (controller port %s; on central as %s.*)\n' \
            "$alias" "$pid" "$KAFKA_HOST:$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$alias"
    else
        printf '%-10s stopped  %-12s %s\n' "$alias" "" "$KAFKA_HOST:$KAFKA_PORT"
        return 3
    fi
}

region_running() { kafka_pid >/dev/null; } # (inside with_region)

mm2_pid() { # pid of *our* MirrorMaker 2, if it runs
    local pid
    pid=$(cat "$MM2_PIDFILE" 2>/dev/null) || return 1
    pid_alive "$pid" || return 1
    [[ $(pid_cmdline "$pid") == *org.apache.kafka.connect.mirror.MirrorMaker*"$MM2_CONF"* ]] || return 1
    echo "$pid"
}

mr_running() { # the whole topology runs
    mr_init
    mm2_pid >/dev/null || return 1
    local i
    for i in "${!MR_ALIASES[@]}"; do
        with_region "${MR_ALIASES[i]}" "${MR_ADDRS[i]}" region_running || return 1
    done
}

mr_any_running() {
    mr_init
    mm2_pid >/dev/null && return 0
    local i
    for i in "${!MR_ALIASES[@]}"; do
        with_region "${MR_ALIASES[i]}" "${MR_ADDRS[i]}" region_running && return 0
    done
    return 1
}

# The pom is keyed by checksum as for the central broker; the Maven cache ($KAFKA_DIR/m2) is
# shared, so the second copy costs no download. Never swap the jars under running processes.
mr_fetch_jars() {
    # shellcheck disable=SC2034 # read by kafka_jars_current / kafka_fetch_jars (scripts/stack)
    local KAFKA_LIBS=$MR_LIBS
    kafka_jars_current && return 0
    if [[ -d $MR_LIBS ]] && mr_any_running; then
        log "note: scripts/kafka/pom.xml changed; the running regional processes keep the old jars until: scripts/stack down multiregion && scripts/stack up multiregion"
        return 0
    fi
    kafka_ensure_tools
    kafka_fetch_jars
}

mm2_render_config() {
    local i alias clusters="" regions="" text
    for i in "${!MR_ALIASES[@]}"; do
        alias=${MR_ALIASES[i]}
        clusters+="$alias, "
        regions+="$alias.bootstrap.servers = ${MR_ADDRS[i]}"$'\n'
        regions+="$alias->central.enabled = true"$'\n'
        # Never mirror records of aborted transactions (recommended with exactly-once).
        regions+="$alias.consumer.isolation.level = read_committed"$'\n'
    done
    text=$(<"$SCRIPT_DIR/kafka/mm2.properties.in")
    # Quoted replacements: bash 5.2 would otherwise expand '&' in them to the match.
    text=${text//@CLUSTERS@/"${clusters}central"}
    text=${text//@CENTRAL@/"$(kafka_addr)"}
    text=${text//@REST_LISTENER@/"http://127.0.0.1:$MM2_REST_PORT"}
    text=${text//@REGIONS@/"${regions%$'\n'}"}
    printf '%s\n' "$text" >"$MM2_CONF"

    cat >"$MM2_LOG4J" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$MM2_LOG
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
# Every client, connector and converter logs its whole configuration at INFO on each (re)start,
# the plugin loader one line per plugin, and the scheduler a line per topic refresh (every 5 s).
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.org.apache.kafka.common=WARN
log4j.logger.org.apache.kafka.connect.runtime.isolation=WARN
log4j.logger.org.apache.kafka.connect.runtime.ConnectorConfig=WARN
log4j.logger.org.apache.kafka.connect.runtime.ConnectorConfig\$EnrichedConnectorConfig=WARN
log4j.logger.org.apache.kafka.connect.runtime.SourceConnectorConfig=WARN
log4j.logger.org.apache.kafka.connect.runtime.TaskConfig=WARN
log4j.logger.org.apache.kafka.connect.runtime.distributed.DistributedConfig=WARN
log4j.logger.org.apache.kafka.connect.runtime.rest=WARN
log4j.logger.org.apache.kafka.connect.json=WARN
log4j.logger.org.apache.kafka.connect.mirror.MirrorMakerConfig=WARN
log4j.logger.org.apache.kafka.connect.mirror.MirrorSourceConfig=WARN
log4j.logger.org.apache.kafka.connect.mirror.MirrorSourceTaskConfig=WARN
log4j.logger.org.apache.kafka.connect.mirror.MirrorCheckpointConfig=WARN
log4j.logger.org.apache.kafka.connect.mirror.MirrorCheckpointTaskConfig=WARN
log4j.logger.org.apache.kafka.connect.mirror.MirrorHeartbeatConfig=WARN
log4j.logger.org.apache.kafka.connect.mirror.Scheduler=WARN
log4j.logger.org.reflections=ERROR
log4j.logger.org.eclipse.jetty=WARN
EOF
}

mm2_launch() {
    mm2_pid >/dev/null && return 0
    rm -f "$MM2_PIDFILE"
    if port_open 127.0.0.1 "$MM2_REST_PORT"; then
        die "127.0.0.1:$MM2_REST_PORT (MirrorMaker's internal REST server) is already in use; choose another: FRAISEQL_MM2_REST_PORT=19183"
    fi
    mm2_render_config
    log "starting MirrorMaker 2: ${MR_ALIASES[*]} -> central $(kafka_addr) (log: $MM2_LOG)"
    echo "---- $(date -Is) starting MirrorMaker 2" >>"$MM2_OUT"
    MM2_LOG_FROM=$(($(stat -c %s "$MM2_LOG" 2>/dev/null || echo 0) + 1))
    # As for the broker: own session, stdio to files, lock fd closed, pid file names the JVM.
    # --clusters central: this node only runs the flows that write to central (the option takes
    # several values, so it must come after the config file).
    # shellcheck disable=SC2016 # $$, $1, $@ belong to the inner shell
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$MM2_PIDFILE" \
        "$JAVA" "-Xmx$MM2_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true "-Dlog4j.configuration=file:$MM2_LOG4J" \
        -cp "$MR_LIBS/*" org.apache.kafka.connect.mirror.MirrorMaker "$MM2_CONF" --clusters central \
        </dev/null >>"$MM2_OUT" 2>&1 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s $MM2_PIDFILE ]] && return 0
        sleep 0.1
    done
    die "MirrorMaker 2 did not start (no pid file); see $MM2_OUT"
}

mm2_fail() {
    {
        echo "---- last lines of $MM2_LOG:"
        tail -n 15 "$MM2_LOG" 2>/dev/null || true
        echo "---- last lines of $MM2_OUT:"
        tail -n 10 "$MM2_OUT" 2>/dev/null || true
    } >&2
    mm2_stop >/dev/null 2>&1 || true
    die "$1 (full logs: $MM2_LOG, $MM2_OUT)"
}

# Ready = every flow's source task logged that it is replicating (since this launch), and every
# region's events topic exists on central as `<alias>.fraiseql.query-events` (the flow found its
# topics and created the remote ones; topics refresh every 5 s, see mm2.properties.in).
mm2_wait() {
    local deadline=$((SECONDS + 2 * START_TIMEOUT)) pid started=0 listed regex since alias
    pid=$(cat "$MM2_PIDFILE")
    regex="^($(IFS='|' && echo "${MR_ALIASES[*]}"))\\.fraiseql\\.query-events\$"
    while :; do
        pid_alive "$pid" || mm2_fail "MirrorMaker 2 exited during start-up"
        if ((!started)); then
            started=1
            # (MM2_LOG_FROM is unset when MirrorMaker was already running.)
            if [[ -n ${MM2_LOG_FROM:-} ]]; then
                since=$(tail -c "+$MM2_LOG_FROM" "$MM2_LOG" 2>/dev/null || true)
                for alias in "${MR_ALIASES[@]}"; do
                    [[ $since == *" replicating "*" topic-partitions $alias->central"* ]] || started=0
                done
            fi
        fi
        if ((started)); then
            listed=$(kafka_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_addr)" \
                --command-config "$KAFKA_TOOLS_CLIENT" --list --topic "$regex" 2>/dev/null | grep -c . || true)
            ((listed >= ${#MR_ALIASES[@]})) && return 0
        fi
        ((SECONDS < deadline)) || mm2_fail "MirrorMaker 2 did not mirror ${MR_ALIASES[*]} to central within $((2 * START_TIMEOUT))s"
        sleep 1
    done
}

mm2_stop() {
    local pid i
    if ! pid=$(mm2_pid); then
        rm -f "$MM2_PIDFILE"
        return 0
    fi
    log "stopping MirrorMaker 2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "MirrorMaker 2 did not stop within 30s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$MM2_PIDFILE"
}

# Start the regional brokers (returns at once; mr_finish_up waits), so that they boot while
# the central broker and PostgreSQL do.
mr_launch() {
    mr_init
    mkdir -p "$MR_DIR"
    mr_fetch_jars
    for_regions region_launch
}

mr_finish_up() { # after the central broker is ready
    if ! for_regions_parallel region_ready; then
        die "a regional Kafka did not start (logs: $LOG_DIR/kafka-<alias>.log)"
    fi
    mm2_launch
    mm2_wait
}

mr_stop() {
    mr_init
    mm2_stop
    for_regions_parallel kafka_stop
}

mr_purge() {
    mr_init
    log "purging the regional clusters' data (jars stay)"
    find "$MR_DIR" -mindepth 1 -maxdepth 1 ! -name libs -exec rm -rf {} + 2>/dev/null || true
    rm -f "$MM2_LOG"* "$MM2_OUT" "$LOG_DIR"/kafka-*.log* "$LOG_DIR"/kafka-*.out "$RUN_DIR"/kafka-*.addr
    # MirrorMaker keeps its source offsets on central (topics mm2-*.<alias>.internal); fresh
    # regional clusters restart at offset 0, so those offsets would skip their first records.
    if kafka_pid >/dev/null; then
        local aliases
        aliases=$(IFS='|' && echo "${MR_ALIASES[*]}")
        kafka_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_addr)" \
            --command-config "$KAFKA_TOOLS_CLIENT" --delete --if-exists \
            --topic "^(mm2-(configs|offsets|status)\\.($aliases)\\.internal|($aliases)\\.checkpoints\\.internal)\$" \
            >>"$SETUP_LOG" 2>&1 || log "warning: could not delete MirrorMaker's state topics on central"
    else
        log "note: central Kafka is not running; MirrorMaker's state topics on it (mm2-*.<alias>.internal) were kept"
    fi
}

mr_status() { # status lines of the topology; fails if any part is stopped
    mr_init
    local rc=0 pid
    for_regions region_status || rc=3
    if pid=$(mm2_pid); then
        printf '%-10s running  pid %-8s %s -> central %s (log: %s)\n' mm2 "$pid" \
            "$(IFS=, && echo "${MR_ALIASES[*]}")" "$(kafka_addr)" "$MM2_LOG"
    else
        printf '%-10s stopped  %-12s %s -> central %s\n' mm2 "" \
            "$(IFS=, && echo "${MR_ALIASES[*]}")" "$(kafka_addr)"
        rc=3
    fi
    return "$rc"
}

mr_print_env() {
    mr_init
    local i spec=""
    for i in "${!MR_ALIASES[@]}"; do
        spec+="${spec:+,}${MR_ALIASES[i]}=${MR_ADDRS[i]}"
    done
    echo "${1:-}FRAISEQL_MIRROR_REGIONS=$spec"
}
