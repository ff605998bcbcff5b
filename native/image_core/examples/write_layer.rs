//! Benchmark helper: write one directory tree as a layer with `layer::write_layer`, the way a
//! build does (same tar normalisation, gzip and both digests), and print what came out.
//!
//!     cargo run --release -p image_core --example write_layer -- DIR [LEVEL] [OUT]
//!
//! Every entry under DIR goes to `/app/...` in one layer. The blob is written to OUT, or
//! discarded (only counted and hashed) without it. Prints one line of JSON: compressed and
//! uncompressed sizes, both digests, the entry count and the milliseconds spent in
//! `write_layer` (the tree walk before it is not included; bench/run times the whole process).
use image_core::fs::{Fs, HostFs, Kind};
use image_core::layer::{write_layer, Entry, LayerSpec, Source};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn walk(fs: &HostFs, root: &Path) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for name in fs.read_dir(&root.join(&rel))? {
            let rel = rel.join(name);
            let src = root.join(&rel);
            let meta = fs.lstat(&src)?;
            let source = match meta.kind {
                Kind::Dir => {
                    stack.push(rel.clone());
                    Source::Dir
                }
                Kind::Symlink => Source::Symlink(fs.read_link(&src)?),
                Kind::File => Source::File(src),
                Kind::Other => continue,
            };
            entries.push(Entry::new(Path::new("/app").join(&rel), source, meta.mode));
        }
    }
    Ok(entries)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: write_layer DIR [LEVEL] [OUT]");
        std::process::exit(2);
    };
    let level: u32 = args.get(1).map_or(Ok(1), |l| l.parse())?;
    let root = std::fs::canonicalize(dir)?;
    let fs = HostFs::new("/");
    let spec = LayerSpec {
        name: "tree".into(),
        entries: walk(&fs, &root)?,
    };
    let out: Box<dyn Write> = match args.get(2) {
        Some(path) => Box::new(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path)?,
        )),
        None => Box::new(io::sink()),
    };
    let start = Instant::now();
    let (info, mut out) = write_layer(&fs, &spec, 315_532_800, level, out, &mut |_| true)?;
    out.flush()?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{{\"size\":{},\"uncompressed_size\":{},\"digest\":\"{}\",\"diff_id\":\"{}\",\"entries\":{},\"level\":{},\"write_layer_ms\":{:.1}}}",
        info.size, info.uncompressed_size, info.digest, info.diff_id, info.entries, level, ms
    );
    Ok(())
}
