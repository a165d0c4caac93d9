# bench/lib/paths.sh: start and stop each path from the load client to the origin.
# Sourced by bench/run. Each start_PATH sets:
#   P_ADDR     where visitors connect (127.0.0.1:PORT)
#   P_HOST     the Host header they send
#   P_GW, P_CL the gateway-side and client-side process ids (comma lists, may be empty)
#   P_FDS      descriptors one process of the path holds per visitor socket (1 or 2)
# and puts its processes in P_PIDS for stop_path. SERVE is the taskset prefix for
# everything but the load generator.

P_PIDS=()

# start_origin: the one origin every path forwards to; sets ORIGIN_ADDR, ORIGIN_PORT.
start_origin() {
  spawn origin "${SERVE[@]}" "$BIN/bench-origin" --listen 127.0.0.1:0
  ORIGIN_PID=$SPAWNED_PID
  local line
  line=$(wait_line "$RUN_DIR/origin.out" '^ready ' "$ORIGIN_PID") || die "origin did not start"
  ORIGIN_ADDR=${line#ready }
  ORIGIN_PORT=${ORIGIN_ADDR##*:}
}

# free_ports N: N distinct TCP ports that nobody listens on right now, space-separated.
free_ports() { "$BIN/bench-client" free-ports "$1" | tr '\n' ' '; }

path_reset() { P_ADDR= P_HOST= P_GW= P_CL= P_FDS=1; P_PIDS=(); }

start_direct() {
  path_reset
  P_ADDR=$ORIGIN_ADDR P_HOST=$ORIGIN_ADDR
}

# nginx: one worker, like capstan's one-thread gateway, with a keep-alive upstream pool
# and no buffering, so that bodies and SSE stream as they do through the tunnels.
# (Inside the config below, \$ is an nginx variable, $ a shell one.)
start_nginx() {
  path_reset
  local dir=$RUN_DIR/nginx port
  read -r port <<<"$(free_ports 1)"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections $NOFILE; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 10000000;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream origin {
    server $ORIGIN_ADDR;
    keepalive 64;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Host \$host;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_buffering off;
      # Unbuffered, nginx reads the upstream proxy_buffer_size at a time: 4 KiB by
      # default, which halves its body rate. 64 KiB matches capstan's chunks.
      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
      proxy_busy_buffers_size 64k;
      proxy_request_buffering off;
      proxy_read_timeout 1h;
      client_max_body_size 0;
    }
  }
}
CONF
  spawn nginx "${SERVE[@]}" "$(command_path nginx)" -p "$dir" -c "$dir/nginx.conf" -e stderr
  P_PIDS=("$SPAWNED_PID") P_GW=$SPAWNED_PID P_FDS=2
  P_ADDR=127.0.0.1:$port P_HOST=$P_ADDR
}

# bore's control port is fixed, so a second bore server on the machine would clash.
BORE_CONTROL_PORT=7835

start_bore() {
  path_reset
  port_busy $BORE_CONTROL_PORT && { log "port $BORE_CONTROL_PORT is taken; bore cannot run"; return 1; }
  local port
  read -r port <<<"$(free_ports 1)"
  spawn bore-server "${SERVE[@]}" "$CACHE/bin/bore" server --bind-addr 127.0.0.1 \
    --min-port "$port" --max-port "$port"
  P_PIDS=("$SPAWNED_PID") P_GW=$SPAWNED_PID
  wait_port 127.0.0.1:$BORE_CONTROL_PORT "$SPAWNED_PID" || return 1
  spawn bore-local "${SERVE[@]}" "$CACHE/bin/bore" local "$ORIGIN_PORT" --local-host 127.0.0.1 \
    --to 127.0.0.1 --port "$port"
  P_PIDS+=("$SPAWNED_PID") P_CL=$SPAWNED_PID P_FDS=2
  P_ADDR=127.0.0.1:$port P_HOST=$P_ADDR
}

start_rathole() {
  path_reset
  local dir=$RUN_DIR/rathole control port
  read -r control port <<<"$(free_ports 2)"
  mkdir -p "$dir"
  cat >"$dir/server.toml" <<CONF
[server]
bind_addr = "127.0.0.1:$control"
[server.services.origin]
token = "bench"
bind_addr = "127.0.0.1:$port"
CONF
  cat >"$dir/client.toml" <<CONF
[client]
remote_addr = "127.0.0.1:$control"
[client.services.origin]
token = "bench"
local_addr = "$ORIGIN_ADDR"
CONF
  spawn rathole-server "${SERVE[@]}" "$CACHE/bin/rathole" --server "$dir/server.toml"
  P_PIDS=("$SPAWNED_PID") P_GW=$SPAWNED_PID
  wait_port "127.0.0.1:$control" "$SPAWNED_PID" || return 1
  spawn rathole-client "${SERVE[@]}" "$CACHE/bin/rathole" --client "$dir/client.toml"
  P_PIDS+=("$SPAWNED_PID") P_CL=$SPAWNED_PID P_FDS=2
  P_ADDR=127.0.0.1:$port P_HOST=$P_ADDR
}

# ssh -R against a private sshd on 127.0.0.1: keys, config and pid file in RUN_DIR.
start_ssh() {
  path_reset
  local dir=$RUN_DIR/ssh sshd_port port
  read -r sshd_port port <<<"$(free_ports 2)"
  mkdir -p "$dir" /run/sshd   # /run/sshd: sshd's privilege-separation directory
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/user_key"
  cp "$dir/user_key.pub" "$dir/authorized_keys"
  cat >"$dir/sshd_config" <<CONF
ListenAddress 127.0.0.1:$sshd_port
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding remote
LogLevel ERROR
CONF
  spawn sshd "${SERVE[@]}" "$(command_path sshd)" -D -e -f "$dir/sshd_config"
  P_PIDS=("$SPAWNED_PID") P_GW=$SPAWNED_PID
  wait_port "127.0.0.1:$sshd_port" "$SPAWNED_PID" || return 1
  spawn ssh "${SERVE[@]}" "$(command_path ssh)" -N -T -i "$dir/user_key" -p "$sshd_port" \
    -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ExitOnForwardFailure=yes -o LogLevel=ERROR \
    -R "127.0.0.1:$port:$ORIGIN_ADDR" root@127.0.0.1
  P_PIDS+=("$SPAWNED_PID") P_CL=$SPAWNED_PID
  P_ADDR=127.0.0.1:$port P_HOST=$P_ADDR
}

# capstan with an external gateway, each process printing its URL first on stdout.
start_capstan() {
  path_reset
  local gateway url
  spawn capstan-gateway "${SERVE[@]}" "$BIN/capstan" gateway --listen 127.0.0.1:0 --max-conns-per-ip 0
  P_PIDS=("$SPAWNED_PID") P_GW=$SPAWNED_PID
  gateway=$(wait_line "$RUN_DIR/capstan-gateway.out" '^http://' "$SPAWNED_PID") || return 1
  spawn capstan-client "${SERVE[@]}" "$BIN/capstan" "$ORIGIN_ADDR" --gateway "$gateway" --name bench
  P_PIDS+=("$SPAWNED_PID") P_CL=$SPAWNED_PID
  url=$(wait_line "$RUN_DIR/capstan-client.out" '^http://' "$SPAWNED_PID") || return 1
  P_HOST=${url#http://}
  P_ADDR=127.0.0.1:${P_HOST##*:}
}

# start_path NAME: start it and wait until GET /1k answers 200 through it, or fail as
# soon as one of its processes exits.
start_path() {
  "start_$1" || return 1
  note_command "$BIN/bench-client" wait --addr "$P_ADDR" --host "$P_HOST"
  local deadline=$((SECONDS + 30))
  until "$BIN/bench-client" wait --addr "$P_ADDR" --host "$P_HOST" --timeout 1 >/dev/null 2>&1; do
    check_alive "${P_PIDS[@]}" || return 1
    ((SECONDS < deadline)) || { log "$1: no answer through it after 30 s"; return 1; }
  done
}

# stop_path: client side first, so that servers see their tunnels leave cleanly.
stop_path() {
  local i
  for ((i = ${#P_PIDS[@]} - 1; i >= 0; i--)); do stop "${P_PIDS[i]}"; done
  P_PIDS=()
}
