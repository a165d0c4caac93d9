# bench/lib/common.sh: logging, process lifecycle and JSON helpers for bench/run.
# Sourced, not run; expects RUN_DIR to exist.

# Every process the harness starts, so that the EXIT trap can stop them all, and the
# name its output files go by.
SPAWNED=()
declare -A SPAWN_NAME=()
# Every command line that started a process or took a measurement, for the record.
declare -A COMMANDS=()

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# json_str TEXT: TEXT as a JSON string.
json_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/ }
  s=${s//$'\t'/ }
  printf '"%s"' "$s"
}

# note_command WORDS...: remember a command line, shell-quoted, for the results; paths
# inside the repository and the run directory are shortened so that runs compare.
note_command() {
  local line
  line=$(printf '%q ' "$@")
  line=${line//"$ROOT/"/}
  line=${line//"$RUN_DIR"/\$RUN_DIR}
  COMMANDS["${line% }"]=1
}

# descendants PID...: the pids and all their live descendants, one a line.
# Read from /proc, not pgrep, so that the harness needs nothing from procps.
descendants() {
  local -A parent_of=()
  local -a todo=("$@") out=() fields
  local stat line pid child
  for stat in /proc/[0-9]*/stat; do
    read -r line <"$stat" 2>/dev/null || continue
    pid=${stat#/proc/}; pid=${pid%/stat}
    # The fields after the command name, which may hold spaces: state, ppid, ...
    read -ra fields <<<"${line##*) }"
    parent_of[$pid]=${fields[1]}
  done
  while ((${#todo[@]})); do
    pid=${todo[0]}; todo=("${todo[@]:1}")
    out+=("$pid")
    for child in "${!parent_of[@]}"; do
      [[ ${parent_of[$child]} == "$pid" ]] && todo+=("$child")
    done
  done
  printf '%s\n' "${out[@]}"
}

# spawn NAME COMMAND...: start COMMAND in the background with its output in
# RUN_DIR/NAME.out and .err; sets SPAWNED_PID. A `taskset` or `env` prefix execs the
# command, so the pid is the command's own.
spawn() {
  local name=$1; shift
  note_command "$@"
  "$@" >"$RUN_DIR/$name.out" 2>"$RUN_DIR/$name.err" </dev/null &
  SPAWNED_PID=$!
  SPAWNED+=("$SPAWNED_PID")
  SPAWN_NAME[$SPAWNED_PID]=$name
}

# stop PID...: SIGTERM each process tree, SIGKILL what is left after 10 s.
stop() {
  (($#)) || return 0
  local -a all
  mapfile -t all < <(descendants "$@")
  kill -TERM "${all[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 10)) pid
  for pid in "${all[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
  done
  kill -KILL "${all[@]}" 2>/dev/null || true
  # Reap our own children so that their pids are not reused under us.
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# stop_all: the EXIT trap; stops whatever is still running.
stop_all() {
  local -a live=()
  local pid
  for pid in "${SPAWNED[@]}"; do kill -0 "$pid" 2>/dev/null && live+=("$pid"); done
  stop "${live[@]}"
}

# check_alive PID...: fail, showing its stderr, if one of the processes has exited.
check_alive() {
  local pid
  for pid; do
    kill -0 "$pid" 2>/dev/null && continue
    log "${SPAWN_NAME[$pid]:-process $pid} exited; its stderr:"
    tail -n 5 "$RUN_DIR/${SPAWN_NAME[$pid]:-none}.err" >&2 2>/dev/null || true
    return 1
  done
}

# wait_line FILE REGEX PID [TIMEOUT]: poll FILE until a line matches REGEX and print
# it; fail early if PID dies, since then the line will never come.
wait_line() {
  local file=$1 regex=$2 pid=$3 deadline=$((SECONDS + ${4:-30})) line
  while ((SECONDS < deadline)); do
    line=$(grep -m1 -E "$regex" "$file" 2>/dev/null || true)
    if [[ -n $line ]]; then printf '%s\n' "$line"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid exited before printing /$regex/; its stderr:"
      tail -n 20 "${file%.out}.err" >&2 || true
      return 1
    fi
    sleep 0.05
  done
  log "timed out waiting for /$regex/ in $file"
  return 1
}

# wait_port HOST:PORT PID [TIMEOUT]: poll until something accepts on HOST:PORT.
wait_port() {
  local host=${1%:*} port=${1##*:} pid=$2 deadline=$((SECONDS + ${3:-30}))
  while ((SECONDS < deadline)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { log "process $pid exited before listening on $1"; return 1; }
    sleep 0.05
  done
  log "timed out waiting for $1"
  return 1
}

# port_busy PORT: whether something on 127.0.0.1 already listens on PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# join , A B C -> A,B,C
join() { local IFS=$1; shift; printf '%s' "$*"; }
