//! State shared by the workers of a host, in memory-mapped tables under the data dir that survive restarts: the
//! generic table (`table`), the dedup window and its ids (`dedup`), devices' last-seen times (`lastseen`).

pub mod dedup;
pub mod lastseen;
pub mod table;

/// For tests: the path of a table file `file` under a `state` directory not made yet (opening the table makes it),
/// in a TempDir (named after `name`) that removes it all when dropped, even if the test panics: the test holds it
/// for as long as it uses the path.
#[cfg(test)]
pub(crate) fn temp_table_path(name: &str, file: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = crate::test_dir(name);
    let path = dir.path().join("state").join(file);
    (dir, path)
}
