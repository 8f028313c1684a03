# Sourced by scripts/test.sh: make sure the PostgreSQL tests have a server.
#
# The tests (crates/sluice-store/src/test_util.rs) use SLUICE_TEST_POSTGRES when set, else
# PostgreSQL on 127.0.0.1:5432 when it answers, else a throwaway server they start themselves with
# initdb/pg_ctl on port 54329. This script only makes the last case possible on a fresh machine:
# when nothing answers on 5432 and no PostgreSQL binaries are installed, it installs Debian's
# `postgresql` package. `stop_throwaway_postgres` stops the throwaway server after the tests.

postgres_answers() {
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null
}

have_postgres_binaries() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

ensure_postgres_for_tests() {
    if [[ -n "${SLUICE_TEST_POSTGRES:-}" && "${SLUICE_TEST_POSTGRES}" != throwaway ]]; then
        echo "[test] PostgreSQL tests use SLUICE_TEST_POSTGRES"
        return
    fi
    if [[ -z "${SLUICE_TEST_POSTGRES:-}" ]] && postgres_answers 5432; then
        echo "[test] PostgreSQL tests use the server on 127.0.0.1:5432"
        return
    fi
    if ! have_postgres_binaries; then
        echo "[test] no PostgreSQL answers on 127.0.0.1:5432: installing Debian's postgresql for a throwaway test server"
        local sudo=""
        if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
        $sudo apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql >/dev/null
    fi
    echo "[test] PostgreSQL tests start a throwaway server on 127.0.0.1:54329"
}

stop_throwaway_postgres() {
    local data="${TMPDIR:-/tmp}/sluice-test-postgres-54329/data"
    [[ -f "$data/postmaster.pid" ]] || return 0
    local bin
    bin="$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort | tail -1)"
    [[ -n "$bin" ]] || return 0
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$bin" -D "$data" stop -m fast >/dev/null 2>&1 || true
    else
        "$bin" -D "$data" stop -m fast >/dev/null 2>&1 || true
    fi
}
