#!/bin/sh
# Creates, once, the demo SFTP server's ed25519 host key (in /hostkey, mounted only into the
# sftp service) and writes the matching known_hosts line for the gateway (in /known_hosts,
# mounted read-only into the gateway). The two live in separate volumes so the gateway
# never holds the backend's private key. Also creates, once, a random password for the
# PostgreSQL role of the usage record (in /dbsecret, mounted into postgres and the gateway):
# no password sits in the repository.
set -eu
umask 077
hostkey_dir=${HOSTKEY_DIR:-/hostkey}
known_hosts_dir=${KNOWN_HOSTS_DIR:-/known_hosts}
db_secret_dir=${DB_SECRET_DIR:-/dbsecret}

password=$db_secret_dir/db-password
if [ ! -s "$password" ]; then
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$password"
    chmod 0644 "$password"   # read by postgres (uid 999) and the gateway (uid 10001); the volume is theirs only
    echo "keygen: created the usage record's database password"
fi

key=$hostkey_dir/ssh_host_ed25519_key
if [ ! -s "$key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C sftp-demo-host -f "$key"
    echo "keygen: created $key"
fi

# Always rewritten from the key, so it can never drift from it. For port 22 the entry is the
# bare host name: OpenSSH and asyncssh look up "[host]:port" only for other ports, and a
# "[sftp]:22" line would make every login fail as a host key mismatch.
tmp=$known_hosts_dir/known_hosts.tmp
printf 'sftp %s\n' "$(cut -d' ' -f1,2 "$key.pub")" > "$tmp"
chmod 0644 "$tmp"   # public data; the gateway runs as uid 10001
mv "$tmp" "$known_hosts_dir/known_hosts"
echo "keygen: gateway trusts $(ssh-keygen -l -f "$key.pub")"
