//! Embeds the migration files (`migrations/<backend>/NNNN_description.sql`)
//! into the binary: writes `$OUT_DIR/migrations.rs`, one list per backend of
//! (version, description, SQL) in version order, read by
//! `src/store/migrations.rs`. This replaces `sqlx::migrate!`, whose proc-macro
//! built a second copy of sqlx and of SQLite's C sources for the host: a
//! quarter of a first build's time.

use std::fmt::Write;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut out = String::new();
    for backend in ["sqlite", "postgres"] {
        let dir = root.join(backend);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|entry| entry.expect("migration directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let (version, rest) = name
                    .split_once('_')
                    .unwrap_or_else(|| panic!("{name}: expected NNNN_description.sql"));
                let version = version
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: expected a number before the _"));
                // The description as sqlx derives it from the file name.
                let description = rest.trim_end_matches(".sql").replace('_', " ");
                (version, description, p.display().to_string())
            })
            .collect();
        files.sort();
        writeln!(
            out,
            "pub const {}: &[(i64, &str, &str)] = &[",
            backend.to_uppercase()
        )
        .unwrap();
        for (version, description, path) in files {
            writeln!(
                out,
                "    ({version}, {description:?}, include_str!({path:?})),"
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(dest, out).unwrap();
}
