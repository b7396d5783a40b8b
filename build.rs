//! Rebuilds the crate when a migration is added: `embed_migrations!` reads the directory at
//! compile time, and cargo only tracks the files it already embedded.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
