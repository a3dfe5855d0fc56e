//! Integration tests against the real Postgres: one binary (fast to link), one module per concern.

mod harness;

mod bench;
mod cli;
mod closed_stdout;
mod config_check;
mod connection_budget;
mod deep_json;
mod demo;
mod examples;
mod http_secrets;
mod inspect;
mod migrate;
mod operate;
mod privileges;
mod publish;
mod redis_faults;
mod registry;
mod relay_concurrency;
mod relay_crash;
mod relay_faults;
mod relay_forward;
mod relay_http;
mod relay_lease;
mod relay_notify;
mod relay_order;
mod relay_retry;
mod relay_schema;
mod relay_shutdown;
mod relay_stall;
mod runbook;
mod sink;
mod sql_publish;
mod startup;
mod telemetry;
mod tls;
