#!/usr/bin/env bash
# Set-up and everyday tasks in one place:  ./dev.sh app  |  ./dev.sh test [pytest args]
# Creates .venv on first use and reinstalls only when the requirements files change.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv

install() {  # install REQUIREMENTS_FILE into the venv unless already done for this content
  local req=$1 stamp="$VENV/.installed-$(basename "$1")"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local want
  want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "Installing $req into $VENV (first run takes a few minutes)..."
    # pip's notes about local index folders are noise here; real errors still fail the script.
    # No wheel cache: torch and its CUDA libraries are ~7 GB installed, and a CI machine once ran out of
    # disk during this install; a second copy of the wheels in ~/.cache only adds to that.
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-cache-dir -q -r "$req" \
        2> >(grep -v "is ignored" >&2); then
      echo "error: installing $req failed; free disk where the venv and pip's temporary files go:" >&2
      df -h "$VENV" "${TMPDIR:-/tmp}" >&2 || true
      exit 1
    fi
    echo "$want" > "$stamp"
  fi
}

browser() {  # Debian's Chromium for the end-to-end browser test, where we may install it
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Chromium for the browser test..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will skip" >&2
  else
    echo "note: /usr/bin/chromium missing and apt-get not usable as this user; the browser test will skip" >&2
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  app)
    install requirements.txt
    exec "$VENV/bin/python" app.py --server.headless true --browser.gatherUsageStats false "$@"
    ;;
  test)
    install requirements-test.txt
    browser
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh app | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
