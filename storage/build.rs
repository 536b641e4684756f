// refinery's embed_migrations! includes each migration file with include_str!, so
// edits rebuild the crate; a new file in migrations/ must trigger a rebuild too.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
