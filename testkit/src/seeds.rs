//! The committed fuzz seed corpora (`fuzz/seeds/<target>/`), kept in sync with the seed lists
//! the fuzz targets define.

use std::path::PathBuf;

/// `fuzz/seeds/<target>` in this repository.
pub fn seed_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

/// Asserts that `fuzz/seeds/<target>/seed-NNN` holds exactly `seeds`, in order. With
/// `SLUICE_WRITE_SEEDS` set, the directory is rewritten from `seeds` first.
pub fn assert_corpus_matches(target: &str, seeds: &[Vec<u8>]) {
    let dir = seed_dir(target);
    if std::env::var_os("SLUICE_WRITE_SEEDS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create seed dir");
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), seed).expect("write seed");
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with SLUICE_WRITE_SEEDS=1",
                dir.display()
            )
        })
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    files.sort();
    let on_disk: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read seed"))
        .collect();
    assert_eq!(
        on_disk, seeds,
        "seed corpus of {target} is stale; regenerate with SLUICE_WRITE_SEEDS=1"
    );
}
