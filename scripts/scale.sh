#!/bin/bash
# usage: scripts/scale.sh PARTITIONS RELAYS [COUNT]  (after cargo build --release)
# Drains COUNT messages (200-byte payloads, 1000 keys) with RELAYS `outbox-relay run` processes
# on one group of PARTITIONS partitions; prints deliveries/s and Postgres rows read per
# delivered message (pg_stat_user_tables on outbox.messages). Needs psql, redis-cli, bc.
set -e
P=$1; R=$2; N=${3:-100000}
BIN=${BIN:-target/release/outbox-relay}
DB=scale_$$
psql -h 127.0.0.1 -U postgres -qc "create database $DB" >/dev/null
URL=postgres://postgres@127.0.0.1:5432/$DB
PFX="scale:$$:"
cat > /tmp/scale.toml <<T
database_url = "$URL"
redis_url = "redis://127.0.0.1:6379"
[redis]
key_prefix = "$PFX"
[[groups]]
name = "g"
partitions = $P
[[groups.routes]]
topics = ["*"]
handler = "forward"
stream = "all"
T
$BIN --config /tmp/scale.toml migrate >/dev/null 2>&1
psql -h 127.0.0.1 -U postgres -d $DB -qc "select outbox.publish('t', jsonb_build_object('n', n, 'pad', repeat('x', 200)), 'k' || (n % 1000)) from generate_series(1,$N) n" >/dev/null
psql -h 127.0.0.1 -U postgres -d $DB -qc "select pg_stat_reset()" >/dev/null
start=$(date +%s.%N)
pids=()
for i in $(seq 1 $R); do RUST_LOG=warn $BIN --config /tmp/scale.toml run 2>/tmp/scale.$i.log & pids+=($!); done
while [ "$(redis-cli xlen ${PFX}all)" -lt $N ]; do sleep 0.05; done
end=$(date +%s.%N)
for p in "${pids[@]}"; do kill $p; done; wait
read_rows=$(psql -h 127.0.0.1 -U postgres -d $DB -Atc "select coalesce(idx_tup_fetch,0)+coalesce(seq_tup_read,0) from pg_stat_user_tables where relname='messages'")
echo "partitions=$P relays=$R n=$N secs=$(echo "$end - $start" | bc) rate=$(echo "$N / ($end - $start)" | bc) rows_read=$read_rows per_delivery=$(echo "scale=2; $read_rows / $N" | bc)"
redis-cli --scan --pattern "${PFX}*" | xargs -r redis-cli del >/dev/null
psql -h 127.0.0.1 -U postgres -qc "drop database $DB with (force)" >/dev/null
