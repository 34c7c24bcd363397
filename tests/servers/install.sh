#!/usr/bin/env bash
# The servers the tests start themselves (PostgreSQL, Prometheus, Alertmanager, Chromium), from
# Debian's packages. Idempotent and quick once installed. Without root or apt-get it says so and
# goes on (the tests that need a missing server skip, saying why); in CI (CI=true) a failed
# install fails the run, so CI never skips them silently.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
have promtool && have prometheus || need+=(prometheus)
have prometheus-alertmanager || have alertmanager || need+=(prometheus-alertmanager)
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "tests/servers/install.sh: not root on Debian, not installing ${need[*]}; the tests needing them will skip" >&2
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
echo "tests/servers/install.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${need[@]}" >/dev/null
