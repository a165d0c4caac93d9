# bench/lib/install.sh: bring the peers into place, skipping what is already there.
# Sourced by bench/run; expects CACHE and log/die from common.sh.

# The Debian packages that provide each peer command.
declare -A APT_PACKAGE=(
  [nginx]=nginx
  [wrk]=wrk
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
  [sshd]=openssh-server
)

# command_path NAME: where NAME is, looking in sbin too (sshd is not on a user's PATH).
command_path() {
  PATH="$PATH:/usr/sbin:/sbin" command -v "$1" 2>/dev/null || true
}

# install_apt: apt-get install what is missing of nginx, wrk and OpenSSH.
install_apt() {
  local -A wanted=()
  local cmd
  for cmd in "${!APT_PACKAGE[@]}"; do
    [[ -n $(command_path "$cmd") ]] || wanted[${APT_PACKAGE[$cmd]}]=1
  done
  ((${#wanted[@]})) || return 0
  command -v apt-get >/dev/null || die "missing ${!wanted[*]} and no apt-get to install them"
  log "installing with apt: ${!wanted[*]}"
  # Installing nginx or openssh-server would start system-wide daemons that the bench
  # does not use; policy-rc.d answering 101 tells the package scripts not to.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${!wanted[@]}" >&2
  ((made_policy)) && rm -f "$policy"
  return 0
}

# install_cargo: bore and rathole into CACHE/bin, built once.
install_cargo() {
  if [[ ! -x $CACHE/bin/bore ]]; then
    log "building bore into $CACHE"
    cargo install --quiet --locked bore-cli --root "$CACHE"
  fi
  if [[ ! -x $CACHE/bin/rathole ]]; then
    log "building rathole into $CACHE"
    # Not --locked: rathole 0.5.0's lock file pins time 0.3.29, which does not compile
    # on Rust 1.80 and later.
    cargo install --quiet rathole --root "$CACHE"
  fi
}

# build_capstan PROFILE: the capstan binary and the bench tools; sets BIN.
build_capstan() {
  local profile=$1 target=${CARGO_TARGET_DIR:-$ROOT/target}
  local -a flags=()
  [[ $profile == release ]] && flags=(--release)
  log "building capstan and the bench tools ($profile)"
  (cd "$ROOT" && cargo build --quiet "${flags[@]}" -p capstan-client --bin capstan \
    -p capstan-bench --bin bench-origin --bin bench-client)
  BIN=$target/$profile
}
