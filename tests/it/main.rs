//! Integration tests against the real Postgres: one binary (fast to link), one module per concern.

mod harness;

mod cli;
mod migrate;
mod publish;
mod sql_publish;
