# bench/lib/workloads.sh: the measurements; each run is one JSON line in RAW.
# Sourced by bench/run. Uses the P_* variables of the path under test (paths.sh), LOAD
# (the taskset prefix of the load generator) and the settings from bench/run.

# usage PIDS: CPU ticks and RSS of the comma list PIDS and their descendants.
usage() { "$BIN/bench-client" proc --pids "$1"; }

# usage_pair: the gateway side's and the client side's usage as one JSON object.
usage_pair() { printf '{"gateway":%s,"client":%s}' "$(usage "$P_GW")" "$(usage "$P_CL")"; }

# record WORKLOAD RUN RESULT [KEY JSON]...: append one line to RAW.
record() {
  local workload=$1 run=$2 result=$3 extra=
  shift 3
  while (($#)); do extra+=",\"$1\":$2"; shift 2; done
  printf '{"layout":"%s","path":"%s","workload":"%s","run":%s,"result":%s%s}\n' \
    "$LAYOUT" "$PATH_NAME" "$workload" "$run" "$result" "$extra" >>"$RAW"
}

# failed WORKLOAD RUN WHAT: a measurement failed. The smoke run is CI's check that the
# harness works, so there it stops everything; a full run records it and goes on.
failed() {
  local message
  message="$3: $(head -n 2 "$RUN_DIR/load.err" 2>/dev/null | tr '\n' ' ')"
  [[ $MODE == smoke ]] && die "$PATH_NAME/$1: $message"
  log "warning: $PATH_NAME/$1 run $2 failed: $message"
  record "$1" "$2" "{\"error\":$(json_str "$message")}"
}

# warm COMMAND...: run a load command and drop its result.
warm() { "${LOAD[@]}" "$@" >/dev/null 2>"$RUN_DIR/load.err" || true; }

# measure WORKLOAD RUN COMMAND...: run a load command on the load core and record the
# JSON it prints last, with the path's CPU and memory before and after.
measure() {
  local workload=$1 run=$2 before after out
  shift 2
  note_command "${LOAD[@]}" "$@"
  before=$(usage_pair)
  if out=$("${LOAD[@]}" "$@" 2>"$RUN_DIR/load.err" | tail -n 1) && [[ $out == \{* ]]; then
    after=$(usage_pair)
    record "$workload" "$run" "$out" before "$before" after "$after"
  else
    failed "$workload" "$run" "$1"
  fi
}

# with_client SUBCOMMAND ARGS...: put bench-client against the path under test in CMD.
with_client() {
  local sub=$1
  shift
  CMD=("$BIN/bench-client" "$sub" --addr "$P_ADDR" --host "$P_HOST" "$@")
}

workload_keepalive() {
  if [[ -z $(command_path wrk) ]]; then
    log "no wrk: skipping the keep-alive workload"
    return 0
  fi
  local -a wrk=("$(command_path wrk)" -t "$LOAD_THREADS" -c "$CONNECTIONS" --latency
    -s "$BENCH/wrk.lua" -H "Host: $P_HOST")
  warm "${wrk[@]}" -d "${WARM_S}s" "http://$P_ADDR/1k"
  local run
  for ((run = 1; run <= RUNS; run++)); do
    measure keepalive "$run" "${wrk[@]}" -d "${SECONDS_PER_RUN}s" "http://$P_ADDR/1k"
  done
}

workload_newconn() {
  with_client conn --concurrency "$CONNECTIONS" --duration "$WARM_S"
  warm "${CMD[@]}"
  with_client conn --concurrency "$CONNECTIONS" --duration "$SECONDS_PER_RUN"
  local run
  for ((run = 1; run <= RUNS; run++)); do measure newconn "$run" "${CMD[@]}"; done
}

# BODIES: workload name, method, size in bytes, transfers per run.
workload_bodies() {
  local spec name method size repeat run
  for spec in "${BODIES[@]}"; do
    read -r name method size repeat <<<"$spec"
    with_client body --method "$method" --size "$size"
    warm "${CMD[@]}"
    CMD+=(--repeat "$repeat")
    for ((run = 1; run <= RUNS; run++)); do measure "$name" "$run" "${CMD[@]}"; done
  done
}

workload_sse() {
  with_client sse --events "$SSE_EVENTS"
  local run
  for ((run = 1; run <= RUNS; run++)); do measure sse "$run" "${CMD[@]}"; done
}

workload_websocket() {
  local run
  with_client ws-rtt --count "$RTT_COUNT"
  for ((run = 1; run <= RUNS; run++)); do measure ws_rtt "$run" "${CMD[@]}"; done
  with_client ws-pipe --window "$PIPE_WINDOW" --warmup "$WARM_S" --duration "$PIPE_S"
  for ((run = 1; run <= RUNS; run++)); do measure ws_pipe "$run" "${CMD[@]}"; done
}

# workload_idle: one run, since it measures memory, not speed. A process that holds two
# descriptors per visitor (nginx: visitor and upstream; bore and rathole: visitor and
# data channel) gets at most half the descriptor limit of sockets.
workload_idle() {
  local count=$IDLE_SOCKETS cap=$(((NOFILE - 1000) / 2 / 1000 * 1000))
  ((P_FDS == 2 && count > cap)) && count=$cap
  with_client ws-idle --count "$count" --gateway-pids "$P_GW" --client-pids "$P_CL"
  measure ws_idle 1 "${CMD[@]}"
}

# run_workloads: everything, for the path that is up; memory at rest before and after.
run_workloads() {
  record rss_idle 1 "$(usage_pair)"
  workload_keepalive
  workload_newconn
  workload_bodies
  workload_sse
  workload_websocket
  record rss_after_load 1 "$(usage_pair)"
  workload_idle
}
