#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine (OpenSSH server,
# curl, lftp, ncftp, the classic ftp client; Prometheus and promtool for the metrics and
# alert-rule checks, openssl for test certificates, HAProxy for the load-balancer test,
# vsftpd as the reference server of the differential tests (and ProFTPD, unpacked),
# fail2ban (with journal support and systemd-journal-remote to write a journal file) for the
# fail2ban filter in docs/operations.md; PostgreSQL's server programs for the shared usage record, its
# clusters started by the tests themselves; a virtualenv with the project and its test tools), then runs
# ruff, mypy and pytest. Needs root: the tests create Unix users and start a real sshd.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k listing`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v curl >/dev/null || missing+=(curl)
command -v lftp >/dev/null || missing+=(lftp)
command -v ncftpput >/dev/null || missing+=(ncftp)
command -v ftp >/dev/null || missing+=(inetutils-ftp)
command -v promtool >/dev/null || missing+=(prometheus)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ -x /usr/sbin/vsftpd ] || missing+=(vsftpd)
# ProFTPD, where vsftpd lacks the feature: its package conflicts with vsftpd's (both are the
# "ftp-server"), so it is unpacked under /opt/ftpgw-test/proftpd and only its libraries installed.
proftpd=/opt/ftpgw-test/proftpd
[ -x $proftpd/usr/sbin/proftpd ] || missing+=(libhiredis0.14 libmemcached11 libmemcachedutil2 libpcre2-posix3)
command -v fail2ban-regex >/dev/null || missing+=(fail2ban)
/usr/bin/python3 -c 'import systemd.journal' 2>/dev/null || missing+=(python3-systemd)
[ -x /lib/systemd/systemd-journal-remote ] || missing+=(systemd-journal-remote)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x $proftpd/usr/sbin/proftpd ]; then
  deb=$(mktemp -d)  # apt warns that it downloads there as root: harmless
  (cd "$deb" && apt-get download -qq proftpd-core)
  mkdir -p $proftpd
  dpkg-deb -x "$deb"/proftpd-core_*.deb $proftpd
  rm -rf "$deb"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"
.venv/bin/ruff check gateway tests bench
.venv/bin/ruff format --check gateway tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
