//! Minimal command line around [`flattener::flatten`], for benchmarks
//! before the `lode` CLI exists: `flatten IMAGE OUT [keep|zero]`.

use flattener::ext4::DeletedData;
use flattener::{FlattenOptions, ImageRef, flatten};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(image), Some(out)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: flatten IMAGE OUT [keep|zero]");
        std::process::exit(2);
    };
    let mut opts = FlattenOptions::default();
    match args.get(3).map(String::as_str) {
        Some("zero") => opts.deleted_data = DeletedData::Zero,
        Some("keep") => opts.deleted_data = DeletedData::Keep,
        _ => {}
    }
    // Phase timings on stderr when LODE_TIMINGS is set.
    let start = std::time::Instant::now();
    let last = std::sync::Mutex::new(None);
    let timings = std::env::var_os("LODE_TIMINGS").is_some();
    let progress = |p: flattener::Progress| {
        if let Ok(mut l) = last.lock()
            && *l != Some(p.phase)
        {
            if timings {
                eprintln!("{:>8.3}s {:?}", start.elapsed().as_secs_f64(), p.phase);
            }
            *l = Some(p.phase);
        }
    };
    opts.progress = Some(&progress);
    let s = flatten(&ImageRef::parse(image)?, &opts, std::path::Path::new(out))?;
    if timings {
        eprintln!("{:>8.3}s done", start.elapsed().as_secs_f64());
    }
    println!("{} bytes, sha256 {}", s.size, s.sha256);
    Ok(())
}
