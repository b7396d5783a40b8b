# Shared settings for the scripts: sourced, not run. Every value can be overridden from outside.
# The build cache lives outside the work tree so a fresh clone (as CI makes) reuses it.
export GAMEMETRICS_CACHE=${GAMEMETRICS_CACHE:-$HOME/.cache/gamemetrics}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$GAMEMETRICS_CACHE/target}
export DATABASE_URL=${DATABASE_URL:-postgres://gamemetrics:gamemetrics@127.0.0.1:5432/gamemetrics?sslmode=disable}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export PATH="$HOME/.cargo/bin:$PATH"
DIESEL_CLI_VERSION=2.3.2

# The diesel CLI generates src/schema.rs; installed once into ~/.cargo/bin.
ensure_diesel_cli() {
  if command -v diesel >/dev/null && diesel --version 2>/dev/null | grep -q "$DIESEL_CLI_VERSION"; then return; fi
  echo "installing diesel_cli $DIESEL_CLI_VERSION (once; a few minutes)" >&2
  dpkg -s libpq-dev >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpq-dev >/dev/null
  # Its own temporary target dir: sharing the project cache would contend for its lock.
  env -u CARGO_TARGET_DIR cargo install --quiet --locked diesel_cli --version "$DIESEL_CLI_VERSION" --no-default-features --features postgres
}

# librdkafka is built from source by rdkafka-sys: it needs a C toolchain, cmake-free make, and
# OpenSSL headers for TLS/SASL to Strimzi.
ensure_build_deps() {
  local missing=()
  for pkg in build-essential libssl-dev pkg-config libpq-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing build dependencies: ${missing[*]}" >&2
    [ -f /tmp/.gamemetrics-apt-updated ] || { apt-get update -qq >/dev/null && touch /tmp/.gamemetrics-apt-updated; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
}

# schemathesis (PyPI), for the OpenAPI contract test, in a venv of its own so its pins don't
# fight checkov's; the test finds it through SCHEMATHESIS.
SCHEMATHESIS_VERSION=4.32.5
export SCHEMATHESIS="$HOME/.cache/gamemetrics/schemathesis/bin/st"
ensure_schemathesis() {
  local venv="$HOME/.cache/gamemetrics/schemathesis"
  # Not `pip show | grep -q`: grep quitting early makes pip's write fail, and pipefail with it.
  local have
  have=$("$venv/bin/pip" show schemathesis 2>/dev/null || true)
  if ! grep -qx "Version: $SCHEMATHESIS_VERSION" <<<"$have"; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
  fi
}

# cargo-deny (crates.io), for the licence, ban and source checks in scripts/test (deny.toml).
CARGO_DENY_VERSION=0.20.2
ensure_cargo_deny() {
  local have
  have=$(cargo deny --version 2>/dev/null || true)
  [ "$have" = "cargo-deny $CARGO_DENY_VERSION" ] && return
  echo "installing cargo-deny $CARGO_DENY_VERSION (a few minutes, once)" >&2
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
}

# Chromium and ChromeDriver (Debian's packages), for the dashboard's browser test.
ensure_chromium() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
  echo "installing chromium and chromium-driver (Debian packages)" >&2
  [ -f /tmp/.gamemetrics-apt-updated ] || { apt-get update -qq >/dev/null && touch /tmp/.gamemetrics-apt-updated; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
}

# Prometheus and promtool (Debian's package), for scripts/check-monitoring and the monitoring
# test; Debian's package only installs them here (no systemd to start its service).
ensure_prometheus() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return
  echo "installing prometheus (Debian package)" >&2
  [ -f /tmp/.gamemetrics-apt-updated ] || { apt-get update -qq >/dev/null && touch /tmp/.gamemetrics-apt-updated; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}


# Waits (up to $1 seconds, default 120) until the machine is quiet: under a quarter of a core
# busy for two seconds running. A bench that measures latency must not start while the stores
# still work off what the previous one left (a checkpoint, autovacuum of a million-row table,
# an AOF rewrite): on two cores that lands in its tail. Says on stderr how long it waited.
wait_for_quiet_machine() {
  local max=${1:-120} waited=0 calm=0 busy=0 a b
  # Busy and idle ticks of all cores, from /proc/stat's first line.
  local ticks='/^cpu /{print $2 + $3 + $4 + $7 + $8, $5 + $6}'
  a=$(awk "$ticks" /proc/stat)
  while ((waited < max)); do
    sleep 1
    waited=$((waited + 1))
    b=$(awk "$ticks" /proc/stat)
    # Hundredths of a core busy over the last second.
    busy=$(awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN { split(a, x, " "); split(b, y, " ");
      t = (y[1] - x[1]) + (y[2] - x[2]); print int(100 * n * (y[1] - x[1]) / (t > 0 ? t : 1)) }')
    a=$b
    if ((busy < 25)); then
      calm=$((calm + 1))
      ((calm >= 2)) && { echo "quiet after ${waited} s" >&2; return 0; }
    else
      calm=0
    fi
  done
  printf 'still %d.%02d cores busy after %s s; measuring anyway\n' $((busy / 100)) $((busy % 100)) "$max" >&2
}
