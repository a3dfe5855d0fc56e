//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds `migrations/` at
//! compile time, and cargo does not watch a directory the macro reads (the sqlx documentation
//! asks for this line).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
