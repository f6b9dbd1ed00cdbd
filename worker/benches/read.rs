//! Read throughput benchmarks (placeholder until the bench lands).
fn main() {}
