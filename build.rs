// `sqlx::migrate!` embeds the migration files at compile time; without this a
// migration added to an already-built tree would not be picked up.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
